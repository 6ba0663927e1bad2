"""The differential corpus: the stdlib's email test messages plus generated odd mail.

Every message is returned in CRLF form, the form a POP3 server hands the gateway and the
form Dovecot serves a maildir message in.
"""

from __future__ import annotations

import pathlib

import test.test_email


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def stdlib_messages() -> list[tuple[str, bytes]]:
    folder = pathlib.Path(test.test_email.__path__[0]) / "data"
    return [(p.name, crlf(p.read_bytes())) for p in sorted(folder.glob("msg_*.txt"))]


_B64 = b"SGVsbG8gd29ybGQsIHRoaXMgaXMgYmFzZTY0IHRleHQgd2l0aCBuZWVkbGUtYjY0Lg=="

GENERATED: dict[str, bytes] = {
    "no-headers-at-all": b"\nJust a body.\n",
    "empty-body": b"From: a@example.com\nSubject: empty\n\n",
    "header-only-no-blank": b"From: a@example.com\nSubject: no blank line",
    "empty-message": b"",
    "missing-from": b"To: b@example.com\nSubject: no from\n\nx\n",
    "rfc2047": (
        b"From: =?UTF-8?Q?J=C3=BCrgen_M=C3=BCller?= <jm@example.com>\n"
        b"To: =?ISO-8859-1?B?U2No9m5l?= <s@example.com>, plain@example.com\n"
        b"Subject: =?UTF-8?B?w5xiZXJncsO2w59lIG5lZWRsZS1zdWJq?=\n"
        b"Date: Mon, 7 Aug 2023 10:00:00 +0200\n"
        b"Message-ID: <id1@example.com>\n\nhallo\n"
    ),
    "folded-subject-tabs": (
        b"From: a@example.com\nSubject: a folded\n\tsubject  with   spaces\n"
        b"Date: Tue,\n 8 Aug 2023 10:00:00 +0000\n\nx\n"
    ),
    "quotes-in-subject": b'From: a@example.com\nSubject: say "hi" \\ there\n\nx\n',
    "8bit-headers": (
        "From: Jürgen <j@example.com>\nSubject: Grüße aus Köln\n\nKörper\n".encode("utf-8")
    ),
    "groups": (
        b"From: a@example.com\nTo: undisclosed-recipients:;\n"
        b"Cc: Friends: joe@example.com, \"Ann\" <ann@example.com>;, bob@example.com\n"
        b"Bcc: Empty Group:;\n\nx\n"
    ),
    "odd-addresses": (
        b"From: justaname\nSender: <@route.example:user@example.com>\n"
        b"Reply-To: user@example.com (Comment Name)\n"
        b"To: \"Quoted \\\"Name\\\"\" <q@example.com>, <bare@example.com>, broken <oops\n"
        b"Cc: a@b, , c@d\n\nx\n"
    ),
    "duplicate-headers": (
        b"Subject: first\nSubject: second\nFrom: one@example.com\nFrom: two@example.com\n"
        b"Content-Type: text/plain; charset=utf-8\nContent-Type: text/html\n\nx\n"
    ),
    "rfc2231": (
        b"From: a@example.com\nMIME-Version: 1.0\n"
        b"Content-Type: multipart/mixed; boundary=\"XX\"\n\n"
        b"--XX\nContent-Type: text/plain; charset*=utf-8''%C3%BC; format=flowed\n\nbody\n"
        b"--XX\nContent-Type: application/octet-stream;\n name*0=\"long\"; name*1=\"name.bin\"\n"
        b"Content-Disposition: attachment;\n filename*0*=UTF-8''na%C3%AFve; filename*1=\" file.txt\"\n"
        b"Content-Transfer-Encoding: base64\n\n" + _B64 + b"\n"
        b"--XX\nContent-Type: application/x-gap; name*0=a; name*2=c\n\nzz\n"
        b"--XX--\n"
    ),
    "rfc822-attached": (
        b"From: outer@example.com\nSubject: outer\nMIME-Version: 1.0\n"
        b"Content-Type: multipart/mixed; boundary=b1\n\npreamble\n"
        b"--b1\nContent-Type: text/plain\n\nouter text\n"
        b"--b1\nContent-Type: message/rfc822\nContent-Description: forwarded\n\n"
        b"From: inner@example.com\nTo: x@example.com\nSubject: =?utf-8?q?inner_needle?=\n"
        b"MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary=b2\n\n"
        b"--b2\nContent-Type: text/plain; charset=us-ascii\n\ninner plain\n"
        b"--b2\nContent-Type: text/html\nContent-Transfer-Encoding: quoted-printable\n\n"
        b"<p>inner =3D html</p>\n--b2--\n"
        b"--b1--\nepilogue\n"
    ),
    "rfc822-toplevel-body": (
        b"From: a@example.com\nMIME-Version: 1.0\nContent-Type: message/rfc822\n\n"
        b"From: b@example.com\nSubject: wrapped\n\nwrapped body\n"
    ),
    "nested-multipart": (
        b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"outer\"\n\n"
        b"--outer\nContent-Type: multipart/related; boundary=\"inner\"\n\n"
        b"--inner\nContent-Type: text/html; charset=\"iso-8859-1\"\n"
        b"Content-Transfer-Encoding: quoted-printable\nContent-ID: <c1@x>\n"
        b"Content-Language: en, de\nContent-Location: http://example.com/\n\n"
        b"caf=E9 needle-qp\n"
        b"--inner\nContent-Type: image/png\nContent-Disposition: inline; filename=a.png\n"
        b"Content-Transfer-Encoding: base64\nContent-MD5: abc==\n\niVBORw0KGgo=\n"
        b"--inner--\n"
        b"--outer\nContent-Type: text/plain\n\nlast\n"
        b"--outer--\n"
    ),
    "broken-boundary-missing-end": (
        b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=zz\n\n"
        b"--zz\nContent-Type: text/plain\n\none\n--zz\nContent-Type: text/plain\n\ntwo, no end\n"
    ),
    "broken-boundary-never-seen": (
        b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=nothere\n\nno parts at all\n"
    ),
    "multipart-no-boundary-param": (
        b"MIME-Version: 1.0\nContent-Type: multipart/mixed\n\n--x\n\nhello\n--x--\n"
    ),
    "boundary-prefix": (
        b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=ab\n\n"
        b"--ab\nContent-Type: multipart/mixed; boundary=abc\n\n--abc\n\ninner\n--abc--\n"
        b"--abtrailing junk\n\nsecond\n--ab--\n"
    ),
    "outer-boundary-closes-inner": (
        b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=o\n\n"
        b"--o\nContent-Type: multipart/alternative; boundary=i\n\n--i\n\nunclosed inner\n"
        b"--o\nContent-Type: text/plain\n\nafter\n--o--\n"
    ),
    "boundary-in-header": (
        b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=h\n\n"
        b"--h\nContent-Type: text/plain\n--h\n\nbody two\n--h--\n"
    ),
    "digest": (
        b"MIME-Version: 1.0\nContent-Type: multipart/digest; boundary=d\n\n"
        b"--d\n\nFrom: d1@example.com\nSubject: digest one\n\none\n"
        b"--d\nContent-Type: text/plain\n\nnot a message\n--d--\n"
    ),
    "no-mime-version-cte": (
        b"From: a@example.com\nContent-Transfer-Encoding: base64\nContent-ID: <x>\n\nbm90IGJhc2U2NA==\n"
    ),
    "content-type-odd": (
        b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=q\n\n"
        b"--q\nContent-Type: text\n\nno subtype\n"
        b"--q\nContent-Type: TEXT/HTML; CHARSET=UTF-8\n\ncaps\n"
        b"--q\nContent-Type: application/x-foo; name=\"a \\\"b\\\" c\"; empty=\"\"\n\nfoo\n"
        b"--q\nContent-Type: ;garbage\n\ngarbage\n"
        b"--q\nContent-Type: image/\n\nno sub\n"
        b"--q--\n"
    ),
    "disposition-lang": (
        b"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
        b"Content-Disposition: inline\nContent-Language: fr\n"
        b"Content-Location: folded\n location\nContent-Description: =?utf-8?q?d=C3=A9j=C3=A0?=\n\n"
        b"bonjour\n"
    ),
    "quoted-printable-body": (
        b"From: qp@example.com\nSubject: qp\nMIME-Version: 1.0\n"
        b"Content-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: quoted-printable\n\n"
        b"Gr=FC=DFe, soft=\nbreak needle-soft=\nbreak\n"
    ),
    "base64-body": (
        b"From: b64@example.com\nSubject: b64\nMIME-Version: 1.0\n"
        b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"
        + _B64 + b"\n"
    ),
    "x-headers": (
        b"From: x@example.com\nX-Foo: bar baz\nX-Empty:\nSubject: custom headers\n"
        b"In-Reply-To: <parent@example.com>\nMessage-ID: <mid@example.com>\n\nx\n"
    ),
    "long-body": (
        b"From: long@example.com\nSubject: a large one\nDate: Wed, 9 Aug 2023 12:00:00 +0000\n\n"
        + b"line of filler text\n" * 400
    ),
    "date-old": (
        b"From: old@example.com\nSubject: old\nDate: Sat, 1 Jan 2000 00:00:00 +0000\n\nold\n"
    ),
    "whitespace-subject": b"From: a@example.com\nSubject:   \t \n\nx\n",
    "bare-cr-and-nul": b"From: a@example.com\nSubject: nul\x00 and cr\r here\n\nx\n",
    # RFC 3501 7.4.2: an empty Sender/Reply-To is set to From (issue 17); a group-only one is not
    "empty-sender-reply-to": (
        b"From: Ann <ann@example.com>\nSender: \nReply-To:\nSubject: empty sender\n\nx\n"
    ),
    "group-only-sender": (
        b"From: ann@example.com\nSender: undisclosed-recipients:;\nReply-To:  \t\n\nx\n"
    ),
}


def nested_rfc822(levels: int) -> bytes:
    """Issue 14's poison message: `levels` message/rfc822 parts, one inside the other."""
    return (b"From: a@example.com\nSubject: nested messages\n"
            + b"Content-Type: message/rfc822\n\n" * levels + b"From: leaf@example.com\n\nleaf\n")


def nested_multipart(levels: int, siblings: bool = False) -> bytes:
    """`levels` multiparts, one inside the other (boundaries never prefixes of one another),
    each followed by a text sibling when `siblings`."""
    head = b"From: a@example.com\nSubject: nested multiparts\nMIME-Version: 1.0\n"
    tail = b""
    for i in range(levels):
        head += b'Content-Type: multipart/mixed; boundary="=b%d="\n\n--=b%d=\n' % (i, i)
        tail = (b"\n--=b%d=\nContent-Type: text/plain\n\nsibling %d\n" % (i, i) if siblings else b"") \
            + b"\n--=b%d=--\n" % i + tail
    return head + b"Content-Type: text/plain\n\nleaf" + tail


def many_parts(count: int) -> bytes:
    return (b'From: a@example.com\nSubject: many parts\nMIME-Version: 1.0\n'
            b'Content-Type: multipart/mixed; boundary="=m="\n\n'
            + b"".join(b"--=m=\nContent-Type: text/plain\n\npart %d\n" % i for i in range(count))
            + b"--=m=--\n")


GENERATED.update({
    "deep-rfc822": nested_rfc822(600),
    "deep-multipart": nested_multipart(340),
    "deep-multipart-siblings": nested_multipart(120, siblings=True),
    "deep-rfc822-just-below-limit": nested_rfc822(98),
})


def generated_messages() -> list[tuple[str, bytes]]:
    return [(name, crlf(data)) for name, data in GENERATED.items()]


def corpus() -> list[tuple[str, bytes]]:
    return stdlib_messages() + generated_messages()
