"""mailproxy: a protocol-aware IMAP/POP3 proxy and POP3-to-IMAP gateway on trio."""

__version__ = "0.1.0"
