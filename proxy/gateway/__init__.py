"""POP3-to-IMAP gateway: fetcher (POP3 -> Store), sync CLI, and (later) the IMAP server over a Store."""
