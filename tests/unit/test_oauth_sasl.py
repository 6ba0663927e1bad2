"""SASL XOAUTH2 / OAUTHBEARER messages: the user is read, the token kept but never shown."""

from __future__ import annotations

import pytest

from proxy.session.oauth_sasl import bearer_token, dummy_response, parse_oauthbearer, parse_xoauth2
from proxy.session.sasl import SaslError


def test_xoauth2() -> None:
    message = b"user=ann@example.com\x01auth=Bearer ya29.tok\x01\x01"
    creds = parse_xoauth2(message)
    assert (creds.user, creds.password, creds.mechanism) == ("ann@example.com", message, "XOAUTH2")
    assert "ya29" not in repr(creds)
    assert bearer_token(message) == b"ya29.tok"
    assert dummy_response("XOAUTH2") == b""


def test_oauthbearer_rfc7628_example() -> None:
    # RFC 7628 4.1, with the authzid; "=2C" and "=3D" unescaped (RFC 5801 4)
    message = b"n,a=user=2Cx=3Dy@example.com,\x01host=server.example.com\x01port=143\x01" \
              b"auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01"
    creds = parse_oauthbearer(message)
    assert (creds.user, creds.mechanism) == ("user,x=y@example.com", "OAUTHBEARER")
    assert bearer_token(message) == b"vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="
    assert dummy_response("OAUTHBEARER") == b"AQ=="


@pytest.mark.parametrize("message, error", [
    (b"user=a\x01auth=Bearer t\x01", "Malformed token message"),
    (b"user=a\x01auth=Basic t\x01\x01", "Malformed XOAUTH2 message"),
    (b"auth=Bearer t\x01\x01", "Malformed XOAUTH2 message"),
    (b"user=\x01auth=Bearer t\x01\x01", "Invalid user name"),
])
def test_xoauth2_malformed(message: bytes, error: str) -> None:
    with pytest.raises(SaslError) as info:
        parse_xoauth2(message)
    assert str(info.value) == error


@pytest.mark.parametrize("message, error", [
    (b"n,,\x01auth=Bearer t\x01\x01", "OAUTHBEARER needs the user (a=) to route the login"),
    (b"p=tls-unique,a=u,\x01auth=Bearer t\x01\x01", "Malformed OAUTHBEARER message"),
    (b"n,a=u=2Z,\x01auth=Bearer t\x01\x01", "Malformed OAUTHBEARER authzid"),
    (b"n,a=u,\x01auth=Bearer t\x01", "Malformed token message"),
    (b"n,a=u,\x01host\x01\x01", "Malformed token message"),
])
def test_oauthbearer_malformed(message: bytes, error: str) -> None:
    with pytest.raises(SaslError) as info:
        parse_oauthbearer(message)
    assert str(info.value) == error
