"""The backend's unit tests (prelabel_backend)."""
