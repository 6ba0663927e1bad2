"""Networking on trio: listeners, TLS, PROXY protocol, connections."""
