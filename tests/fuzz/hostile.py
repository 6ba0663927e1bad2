"""Hostile messages: each once made the gateway's analysis of a stored message raise, wedge the
account's sync or cost work growing faster than the message (the CHANGELOG names the commit).
The regression run (test_fuzz_hostile_mail.py) feeds each, at a size that is cheap when the
bug is fixed, to every function that reads a stored message (bench/fuzz/targets.py), and the
atheris harness (bench/fuzz/atheris_analysis.py) starts its corpus from them.
"""

from __future__ import annotations

HEAD = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: s\r\n"


def _subject(value: bytes) -> bytes:
    return b"From: a@example.org\r\nSubject: " + value + b"\r\n\r\nbody\r\n"


def _nested_multipart(levels: int) -> bytes:
    head, tail = HEAD + b"MIME-Version: 1.0\r\n", b""
    for i in range(levels):
        head += b'Content-Type: multipart/mixed; boundary="=b%d="\r\n\r\n--=b%d=\r\n' % (i, i)
        tail = b"\r\n--=b%d=--\r\n" % i + tail
    return head + b"Content-Type: text/plain\r\n\r\nleaf" + tail


HOSTILE: dict[str, bytes] = {
    # the eighth session's eight (CHANGELOG 0.x, "hostile mail")
    "nested-rfc822": HEAD + b"Content-Type: message/rfc822\r\n\r\n" * 600 + b"x\r\n",
    "nested-multipart": _nested_multipart(300),
    "many-boundaries": HEAD + b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
    + b"--b\r\n" * 4000,
    "unclosed-encoded-words": _subject(b"=?a?q?x" * 4000),
    "charset-continuations-mixed": HEAD + b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset*=a; charset*0*=b\r\n\r\nx\r\n",
    "charset-idna": HEAD + b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=idna\r\n\r\n\xff\r\n",
    "many-charset-params": HEAD + b"MIME-Version: 1.0\r\nContent-Type: text/plain"
    + b"; a=b" * 4000 + b"\r\n\r\nx\r\n",
    "base-subject-blobs": _subject(b"[b] " * 5000 + b"[b]"),
    "qp-trailing-blanks": HEAD + b"MIME-Version: 1.0\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    + b" " * 40000 + b"x\r\n",
    "message-id-many-lt": b"From: a@example.org\r\nMessage-ID: " + b"<" * 20000
    + b"\r\nReferences: " + b"<" * 20000 + b"<m@x>\r\nIn-Reply-To: " + b"<" * 20000 + b"\r\n\r\nx\r\n",
    "encoded-word-nul-charset": _subject(b"=?\x00utf-8?q?caf=C3=A9?="),
    # this session (fz)
    "from-of-commas": b"From: " + b"," * 5000 + b"\r\nTo: " + b"," * 5000 + b"\r\n\r\nx\r\n",
    "rfc2231-continuations": HEAD + b"MIME-Version: 1.0\r\nContent-Type: text/plain"
    + b"".join(b"; a*%d*=xxxxxxxx" % n for n in range(4000)) + b"\r\n\r\nx\r\n",
}
