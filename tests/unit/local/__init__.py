"""The local mode's unit tests (prelabel_local); a test that imports another package too stays in tests/unit/."""
