"""The REST API (Dkron's /v1 shape) and the web UI, served by Flask."""
