"""charsets.charset_params: the charset `email.message.Message.get_content_charset()` reads from
the cut Content-Type is the one it reads from the whole, and cutting is linear where the
standard library's parameter split is quadratic."""

from __future__ import annotations

import email.message

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.gateway.charsets import MAX_CHARSET_PIECES, charset_params, content_charset

PIECES = ["text/plain", ";", " ", '"', '\\"', "\\", "=", "charset", "CharSet", "charset*",
          "charset*0*", "charset*1", "utf-8", "iso-8859-1''", "%41", "name", "x;y", "*", "'"]


def _charset(value: str):
    leaf = email.message.Message()
    leaf["Content-Type"] = value
    try:
        return "ok", leaf.get_content_charset(), leaf.get_content_type()
    except (LookupError, UnicodeError, ValueError, TypeError) as exc:
        return "error", type(exc)


@pytest.mark.parametrize("value", [
    "text/plain", "text/plain; charset=utf-8", 'text/plain; name="a;b"; charset="koi8-r"',
    "text/plain; charset*0*=us-ascii'en'utf; charset*1=-8", "text/plain; CHARSET=x; charset=y",
    'text/"pl;ain"; charset=x', "charset=a; charset=b", "text/plain; charset",
    "text/plain; charset*=utf-8''%66oo; charset=plain", 'text/plain; a="\\"; charset=q"; charset=r',
    "text/plain;;; charset=z;"])
def test_the_same_charset_and_type(value):
    assert _charset(charset_params(value)) == _charset(value)


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=14).map("".join))
def test_the_same_charset_and_type_for_any_mix(value):
    whole = _charset(value)
    if whole == ("error", TypeError):
        # numbered and unnumbered continuations of one parameter, of any name (decode_params
        # sorts None with a number): the cut keeps only the charset's pieces, so another
        # parameter's cannot raise there (found by this test: 'x;ycharset*0*;x;ycharset*').
        # What ingest and PREVIEW call on the cut never raises.
        leaf = email.message.Message()
        leaf["Content-Type"] = charset_params(value)
        content_charset(leaf)
        return
    assert _charset(charset_params(value)) == whole


def test_what_is_left_does_not_grow_with_the_parameters():
    """40,000 parameters took 0.8 s in get_content_charset (email.message._parseparam splits
    each off the rest of the value): what it reads now is the type and the charset only."""
    many = "".join(f"; p{n}=v" for n in range(40000))
    assert charset_params("text/plain" + many + "; charset=koi8-r" + many) == \
        "text/plain; charset=koi8-r"
    continued = "".join(f"; charset*{n}=x" for n in range(40000))
    assert charset_params("text/plain" + continued).count(";") == MAX_CHARSET_PIECES


def test_numbered_and_unnumbered_continuations_are_no_charset_not_an_error():
    """email.utils.decode_params sorts the pieces' numbers, None among them: TypeError."""
    leaf = email.message.Message()
    leaf["Content-Type"] = "text/plain; charset*=a; charset*0*=b"
    with pytest.raises(TypeError):
        leaf.get_content_charset()
    assert content_charset(leaf) is None
