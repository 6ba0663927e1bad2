"""Relay sessions: the proxy terminates the client, logs in upstream, then relays the session."""
