"""What the relay and the gateway share: a session and the runtime it sees, the pre-login
dialogues, login with throttling, the upstream client's transport, and the one Failure table.
Layers: proxy.net below, proxy.relay and proxy.gateway above (tests/unit/test_layers.py)."""
