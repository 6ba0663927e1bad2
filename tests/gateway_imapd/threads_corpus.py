"""Generated mail for SORT and THREAD differential tests: threads with missing parents, loops
and self-references in References, In-Reply-To only, duplicate Message-IDs, subject-only
threads (Re:/Fwd:/[list] variants), equal dates, no dates, and sort keys in several charsets."""

from __future__ import annotations


def _msg(n: int, subject: str | None, *, mid: str | None = "auto", refs: str | None = None,
         irt: str | None = None, date: str | None = "auto", frm: str = "", to: str = "",
         cc: str = "") -> bytes:
    lines = []
    if frm != "-":
        lines.append(f"From: {frm or f'User {n % 7} <user{n % 7}@example.org>'}")
    if to:
        lines.append(f"To: {to}")
    if cc:
        lines.append(f"Cc: {cc}")
    if subject is not None:
        lines.append(f"Subject: {subject}")
    if date == "auto":
        date = f"Mon, {1 + n % 27} Feb 2021 {n % 24:02d}:{(n * 7) % 60:02d}:00 +0000"
    if date is not None:
        lines.append(f"Date: {date}")
    if mid == "auto":
        mid = f"<t{n}@example.org>"
    if mid is not None:
        lines.append(f"Message-ID: {mid}")
    if refs is not None:
        lines.append(f"References: {refs}")
    if irt is not None:
        lines.append(f"In-Reply-To: {irt}")
    return ("\r\n".join(lines) + f"\r\n\r\nbody {n}\r\n").encode("utf-8")


def messages() -> list[bytes]:
    m = []
    add = m.append
    # a plain thread, replies out of date order
    add(_msg(100, "Plan", mid="<p0@x>", date="Tue, 2 Mar 2021 10:00:00 +0000"))
    add(_msg(101, "Re: Plan", mid="<p1@x>", refs="<p0@x>", date="Tue, 2 Mar 2021 12:00:00 +0000"))
    add(_msg(102, "Re: Plan", mid="<p2@x>", refs="<p0@x>", date="Tue, 2 Mar 2021 11:00:00 +0000"))
    add(_msg(103, "Re: Re: Plan", mid="<p3@x>", refs="<p0@x> <p2@x>",
             date="Tue, 2 Mar 2021 13:00:00 +0000"))
    # missing parents: two replies to a message we never got (a dummy with two children)
    add(_msg(104, "Re: Lost", mid="<l1@x>", refs="<lost@x>"))
    add(_msg(105, "Re: Lost", mid="<l2@x>", refs="<lost@x>"))
    # a missing middle message
    add(_msg(106, "Chain", mid="<c0@x>"))
    add(_msg(107, "Re: Chain", mid="<c2@x>", refs="<c0@x> <c1@x>"))
    # In-Reply-To only (first ID), References with junk
    add(_msg(108, "Re: Chain", mid="<c3@x>", irt="<c2@x> <c0@x>"))
    add(_msg(109, "Re: Chain", mid="<c4@x>", refs="garbage <not-an-id> <c3@x> (comment)"))
    # loops in References: a -> b -> a, and a message referencing itself
    add(_msg(110, "Loop", mid="<a@loop>", refs="<b@loop>"))
    add(_msg(111, "Loop", mid="<b@loop>", refs="<a@loop>"))
    add(_msg(112, "Self", mid="<self@x>", refs="<self@x>"))
    add(_msg(113, "Loop2", mid="<x1@loop>", refs="<x2@loop> <x1@loop> <x2@loop>"))
    # duplicate Message-IDs: the second is treated as having none
    add(_msg(114, "Dup", mid="<dup@x>"))
    add(_msg(115, "Dup again", mid="<dup@x>", refs="<p0@x>"))
    # subject-only threads: no references at all
    add(_msg(116, "Weekly report"))
    add(_msg(117, "RE: weekly report", mid=None))
    add(_msg(118, "Fwd: Weekly Report"))
    add(_msg(119, "[list] Re: weekly report"))
    add(_msg(120, "[Fwd: Weekly report]"))
    add(_msg(121, "Weekly report (fwd)"))
    add(_msg(122, "Re[2]: weekly   report"))
    add(_msg(123, "Fw:Weekly report"))
    # empty and odd subjects, blobs
    add(_msg(124, ""))
    add(_msg(125, None))
    add(_msg(126, "Re:"))
    add(_msg(127, "[only a blob]"))
    add(_msg(128, "[blob] [another] real subject"))
    add(_msg(129, "  leading   and trailing  "))
    add(_msg(130, "=?UTF-8?Q?Re=3A_=C3=9Cber_alles?="))
    add(_msg(131, "=?ISO-8859-1?Q?=FCber_alles?="))
    add(_msg(132, "über alles"))
    # equal dates (ties by sequence number), no dates, unparsable dates, time zones
    add(_msg(133, "Same time", date="Wed, 3 Mar 2021 09:00:00 +0000"))
    add(_msg(134, "Same time", date="Wed, 3 Mar 2021 10:00:00 +0100"))
    add(_msg(135, "Same time", date="Wed, 3 Mar 2021 09:00:00 +0000"))
    add(_msg(136, "No date", date=None))
    add(_msg(137, "Bad date", date="yesterday-ish"))
    add(_msg(138, "Far zone", date="Wed, 3 Mar 2021 23:30:00 -1200"))
    # address keys: display names, encoded names, groups, missing, case
    add(_msg(139, "addr", frm='"Zed Alpha" <zed@example.org>', to="bob@Example.org",
             cc="Carol <carol@x.org>, dave@x.org"))
    add(_msg(140, "addr", frm="=?UTF-8?Q?=C3=89mile?= <emile@example.org>", to="Alice <alice@x.org>"))
    add(_msg(141, "addr", frm="plain@example.org", to="undisclosed-recipients:;"))
    add(_msg(142, "addr", frm="-", to="ZOE@x.org", cc="Group: a@x.org;"))
    add(_msg(143, "addr", frm='"" <empty-name@example.org>'))
    add(_msg(144, "addr", frm="Anne (comment) <anne@example.org>"))
    add(_msg(145, "addr", frm="bob@example.org, alice@example.org", to="beth@x.org"))
    add(_msg(146, "addr", frm="BOB@example.org"))
    # a deep chain (each message refers to all earlier ones)
    ids = [f"<deep{k}@x>" for k in range(40)]
    for k in range(40):
        add(_msg(200 + k, "Re: deep" if k else "deep", mid=ids[k],
                 refs=" ".join(ids[:k]) if k else None))
    return m
