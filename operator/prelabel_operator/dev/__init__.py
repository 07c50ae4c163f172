"""Local stand-ins for a real deployment: a Kubernetes control plane and a Label Studio server as
processes on this machine, on loopback. Used by the integration tests and the local mode."""
