"""OAuth2 brokering (issue 18 step 3): clients log in to the proxy with a local password, the
proxy logs in upstream with an access token refreshed from the user's stored refresh token.

passwords.py   the local password file (Argon2 hashes, checked in worker threads)
token_file.py  refresh tokens at rest (AES-GCM records, proxy/store/crypto.py)
endpoint.py    the provider's token and device authorization endpoints (httpx on trio)
broker.py      access tokens per user: cache, refresh, rotation; the SASL message
cli.py         `mailproxy oauth2 enrol` and `mailproxy oauth2 hash-password`
"""

from .broker import Broker, Brokers, BrokerUnavailable, NotEnrolled, RefreshRefused, sasl_message

__all__ = ["Broker", "BrokerUnavailable", "Brokers", "NotEnrolled", "RefreshRefused",
           "sasl_message"]
