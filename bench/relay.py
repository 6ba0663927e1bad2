"""Relay benchmarks: direct Dovecot vs through mailproxy (vs nginx's mail proxy), interleaved in one run.

    .venv/bin/python bench/relay.py [imap] [pop3] [tls] [metrics] [compress] [--messages 2000] ...

Each benchmark starts its own Dovecot (tests/support/dovecot.py) with a fresh mailbox and its own
mailproxy subprocess (`--log-level WARNING`), warms every path up once (Dovecot builds its indexes on
first access), then runs the contenders in alternating rounds (A, B, A, B, ...) because the machine is
shared and noisy. Tables show the median over rounds and the ratio to direct. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any, Callable

import common
import nginxmail
from clients import Imap, client_tls_context, imap_session, pop3_download, pop3_session, session_rate
from common import (
    Env,
    Table,
    interleave,
    make_mailbox,
    median,
    percentile,
    ratio,
    small_mailbox,
    tls_listener,
)

RESULTS: dict[str, Any] = {}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (from /proc)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return float("nan")


# -- measurement primitives --------------------------------------------------------------------------

def fetch_runner(port: int, user: str, password: str, expected: str, tls=None, *,
                 compress: bool = False) -> Callable[[], dict]:
    def run() -> dict:
        imap = Imap(port, tls)
        imap.login(user, password)
        deflated = imap.compress() if compress else None
        imap.command(b"SELECT INBOX")
        t0 = time.perf_counter()
        count, total, digest = imap.fetch_all()
        elapsed = time.perf_counter() - t0
        imap.logout()
        if digest != expected:
            raise SystemExit(f"FETCH sha256 mismatch on port {port}: {digest} != {expected}")
        return {"mbps": total / elapsed / 1e6, "seconds": elapsed, "bytes": total, "messages": count,
                "sha256": digest, "wire_in": deflated.wire_in if deflated else float("nan")}
    return run


def noop_runner(port: int, user: str, password: str, count: int, cpu_pid: int | None = None,
                tls=None, cpu: Callable[[int], float] = cpu_seconds) -> Callable[[], dict]:
    """`count` NOOPs on one logged-in connection; with cpu_pid, also that process's CPU per NOOP
    (`cpu(pid)`: its CPU seconds)."""
    def run() -> dict:
        imap = Imap(port, tls)
        imap.login(user, password)
        imap.command(b"SELECT INBOX")
        imap.noop_rtt_ns(200)  # warm the connection and the proxy's per-command caches
        c0 = cpu(cpu_pid) if cpu_pid else 0.0
        samples = sorted(imap.noop_rtt_ns(count))
        cpu_us = (cpu(cpu_pid) - c0) / count * 1e6 if cpu_pid else float("nan")
        imap.logout()
        return {"p50_us": percentile(samples, 0.5) / 1000, "p99_us": percentile(samples, 0.99) / 1000,
                "cpu_us": cpu_us}
    return run


def sessions_runner(fn: Callable[[], None], seconds: float, concurrency: int) -> Callable[[], float]:
    return lambda: session_rate(fn, seconds, concurrency)


def pop3_runner(port: int, user: str, password: str, expected: str, tls=None) -> Callable[[], dict]:
    def run() -> dict:
        count, total, digest, elapsed = pop3_download(port, user, password, tls)
        if digest != expected:
            raise SystemExit(f"POP3 sha256 mismatch on port {port}: {digest} != {expected}")
        return {"mbps": total / elapsed / 1e6, "seconds": elapsed, "bytes": total, "messages": count,
                "sha256": digest}
    return run


def with_cpu(pid: int, fn: Callable[[], Any], sink: list) -> Callable[[], Any]:
    """fn, also appending (its result, CPU seconds process `pid` used meanwhile, wall seconds) to sink."""
    return with_cpu_of(lambda: cpu_seconds(pid), fn, sink)


def with_cpu_of(cpu: Callable[[], float], fn: Callable[[], Any], sink: list) -> Callable[[], Any]:
    """fn, also appending (its result, the CPU seconds `cpu()` grew by meanwhile, wall seconds) to sink."""
    def run():
        c0, t0 = cpu(), time.perf_counter()
        result = fn()
        sink.append((result, cpu() - c0, time.perf_counter() - t0))
        return result
    return run


def med(results: dict[str, list], key: str | None = None) -> dict[str, float]:
    return {label: median([r[key] if key else r for r in runs]) for label, runs in results.items()}


def spread(runs: list, key: str | None = None) -> str:
    values = [r[key] if key else r for r in runs]
    if not values:
        return "-"
    return f"{min(values):.3g}..{max(values):.3g}"


# -- 1. IMAP ------------------------------------------------------------------------------------------

EARLY = "early"   # the column of a second mailproxy with `connect_early: true` upstream
EARLY_NOTE = f"{EARLY}: mailproxy with upstreams.main.<protocol>.connect_early: true, sessions only"
NAN = float("nan")


def early_proxy(env: Env, protocol: str):
    """A second mailproxy like env.proxy()'s, connecting upstream at the client's accept
    (`connect_early: true` for `protocol`; bench/ab_relay.py --warm compares warm_pool too)."""
    upstream = {"host": "127.0.0.1", "imap": {"port": env.dovecot.imap_port, "tls": "none"},
                "pop3": {"port": env.dovecot.pop3_port, "tls": "none"}}
    upstream[protocol]["connect_early"] = True
    return env.proxy([{"name": protocol, "protocol": protocol}], metrics=True,
                     extra={"upstreams": {"main": upstream}})


def bench_imap(args) -> None:
    log("imap: starting Dovecot, delivering the mailbox")
    with Env("imap") as env:
        box = make_mailbox(args.messages)
        bulk_user, bulk_pw = env.user_with(box)
        sess_user, sess_pw = env.user_with(small_mailbox(10))
        proxy = env.proxy([{"name": "imap", "protocol": "imap"}], metrics=True)
        ports = {"direct": env.dovecot.imap_port, "mailproxy": proxy.port("imap")}
        if args.nginx and nginxmail.available():
            ng = nginxmail.NginxMail(env.root / "nginx", env.dovecot.imap_port, env.dovecot.pop3_port)
            env.on_close(ng.stop)
            ports["nginx"] = ng.imap_port
        log(f"imap: mailbox {len(box.messages)} messages, {box.total / 1e6:.1f} MB; ports {ports}")
        for _label, port in ports.items():  # warm-up: indexes, page cache, proxy code paths
            fetch_runner(port, bulk_user, bulk_pw, box.sha256)()
            imap_session(port, sess_user, sess_pw)
        early = early_proxy(env, "imap")   # sessions rows only
        session_ports = {**ports, EARLY: early.port("imap")}
        imap_session(session_ports[EARLY], sess_user, sess_pw)
        rounds, out = args.rounds, {}
        slow = {"nginx": args.nginx_rounds}

        log("imap: sessions/s sequential")
        seq_cpu: list = []
        early_cpu: list = []
        runners = {k: sessions_runner(lambda p=p: imap_session(p, sess_user, sess_pw), args.seconds, 1)
                   for k, p in session_ports.items()}
        runners["mailproxy"] = with_cpu(proxy.pid, runners["mailproxy"], seq_cpu)
        runners[EARLY] = with_cpu(early.pid, runners[EARLY], early_cpu)
        out["seq"] = interleave(rounds, runners)
        log("imap: sessions/s 16 concurrent")
        out["conc"] = interleave(rounds, {k: sessions_runner(lambda p=p: imap_session(p, sess_user, sess_pw),
                                                               args.seconds, 16)
                                          for k, p in session_ports.items()})
        log("imap: NOOP round trips")
        out["noop"] = interleave(rounds, {k: noop_runner(p, sess_user, sess_pw, args.noops,
                                                         proxy.pid if k == "mailproxy" else None)
                                          for k, p in ports.items()})
        log("imap: bulk FETCH")
        cpu0 = cpu_seconds(proxy.pid)
        out["fetch"] = interleave(args.fetch_rounds, {k: fetch_runner(p, bulk_user, bulk_pw, box.sha256)
                                                      for k, p in ports.items()}, only_first=slow)
        proxy_cpu = cpu_seconds(proxy.pid) - cpu0
        proxy_fetch_s = sum(r["seconds"] for r in out["fetch"]["mailproxy"])

        labels = list(session_ports)
        t = Table(f"IMAP relay: direct Dovecot vs mailproxy"
                  f"{' vs nginx' if 'nginx' in ports else ''} (median of {rounds} interleaved rounds, "
                  f"FETCH {args.fetch_rounds} (nginx {min(args.nginx_rounds, args.fetch_rounds)}); "
                  f"{len(box.messages)} msgs, {box.total / 1e6:.1f} MB; {EARLY_NOTE})",
                  ["metric", *labels, "mailproxy/direct", f"{EARLY}/direct",
                   *(["nginx/direct"] if "nginx" in ports else []), "target"])

        def row(name, values, target):
            cells = [values.get(k, NAN) for k in labels]
            ratios = [ratio(values["mailproxy"], values["direct"]),
                      ratio(values.get(EARLY, NAN), values["direct"])]
            if "nginx" in values:
                ratios.append(ratio(values["nginx"], values["direct"]))
            t.add(name, *cells, *ratios, target)

        row("sessions/s, sequential (LOGIN+SELECT+LOGOUT)", med(out["seq"]), ">= 0.6x")
        row("sessions/s, 16 concurrent", med(out["conc"]), ">= 0.6x")
        p50, p99 = med(out["noop"], "p50_us"), med(out["noop"], "p99_us")
        row("NOOP round trip p50 (us)", p50, "")
        row("NOOP round trip p99 (us)", p99, "")
        fetch = med(out["fetch"], "mbps")
        row("UID FETCH 1:* BODY.PEEK[] (MB/s)", fetch, ">= 0.8x")
        print(t.render())
        added = p50["mailproxy"] - p50["direct"]
        print(f"\nadded NOOP p50 latency (mailproxy - direct): {added:.0f} us (target <= 150 us)")
        if "nginx" in p50:
            print(f"added NOOP p50 latency (nginx - direct): {p50['nginx'] - p50['direct']:.0f} us")
        shas = {k: {r["sha256"] for r in v} for k, v in out["fetch"].items()}
        print(f"FETCH sha256 equal on every path and round: {len(set.union(*shas.values())) == 1} "
              f"({box.sha256[:16]}..., {box.total} bytes)")
        print(f"mailproxy CPU during its FETCH rounds: {proxy_cpu:.2f} s CPU for {proxy_fetch_s:.2f} s wall "
              f"({100 * proxy_cpu / proxy_fetch_s:.0f}% of one core)")
        per_session = median([cpu / (rate * wall) * 1e3 for rate, cpu, wall in seq_cpu])
        per_noop = median([r["cpu_us"] for r in out["noop"]["mailproxy"]])
        print(f"mailproxy CPU (user+sys, from /proc): {per_session:.2f} ms per sequential session, "
              f"{per_noop:.0f} us per relayed NOOP, "
              f"{1e3 * proxy_cpu / (len(out['fetch']['mailproxy']) * box.total / 1e6):.2f} "
              "ms per MB of FETCH")
        per_early_session = median([cpu / (rate * wall) * 1e3 for rate, cpu, wall in early_cpu])
        print(f"{EARLY} CPU (user+sys, from /proc): "
              f"{per_early_session:.2f} ms per sequential session")
        for key in ("seq", "conc"):
            print(f"  {key} rounds: " + "; ".join(f"{k} {spread(v)}" for k, v in out[key].items()))
        print("  fetch MB/s rounds: "
              + "; ".join(f"{k} {spread(v, 'mbps')}" for k, v in out["fetch"].items()))
        RESULTS["imap"] = {"raw": out, "added_noop_p50_us": added, "mailbox_bytes": box.total,
                           "proxy_cpu_fetch_s": proxy_cpu, "proxy_cpu_ms_per_session": per_session,
                           "proxy_cpu_us_per_noop": per_noop,
                           "early_cpu_ms_per_session": per_early_session}


# -- 2. POP3 ------------------------------------------------------------------------------------------

def bench_pop3(args) -> None:
    log("pop3: starting Dovecot, delivering the mailbox")
    with Env("pop3") as env:
        box = make_mailbox(args.messages)
        user, pw = env.user_with(box)
        sess_user, sess_pw = env.user_with(small_mailbox(10))
        proxy = env.proxy([{"name": "pop3", "protocol": "pop3"}], metrics=True)
        ports = {"direct": env.dovecot.pop3_port, "mailproxy": proxy.port("pop3")}
        if args.nginx and nginxmail.available():
            ng = nginxmail.NginxMail(env.root / "nginx", env.dovecot.imap_port, env.dovecot.pop3_port)
            env.on_close(ng.stop)
            ports["nginx"] = ng.pop3_port
        elif args.nginx:
            print("nginx or libnginx-mod-mail missing: no nginx column (bench/run.sh installs them)")
        log(f"pop3: mailbox {len(box.messages)} messages, {box.total / 1e6:.1f} MB; ports {ports}")
        for label, port in ports.items():
            if label != "nginx":
                pop3_runner(port, user, pw, box.sha256)()
            pop3_session(port, sess_user, sess_pw)
        early = early_proxy(env, "pop3")   # the sessions row only
        session_ports = {**ports, EARLY: early.port("pop3")}
        pop3_session(session_ports[EARLY], sess_user, sess_pw)
        rounds, out = args.rounds, {}
        log("pop3: sessions/s sequential")
        seq_cpu: list = []
        early_cpu: list = []
        runners = {k: sessions_runner(lambda p=p: pop3_session(p, sess_user, sess_pw), args.seconds, 1)
                   for k, p in session_ports.items()}
        runners["mailproxy"] = with_cpu(proxy.pid, runners["mailproxy"], seq_cpu)
        runners[EARLY] = with_cpu(early.pid, runners[EARLY], early_cpu)
        out["seq"] = interleave(rounds, runners)
        log(f"pop3: full download (nginx in the first {args.nginx_rounds} rounds only)")
        out["retr"] = interleave(args.fetch_rounds, {k: pop3_runner(p, user, pw, box.sha256)
                                                     for k, p in ports.items()},
                                 only_first={"nginx": args.nginx_rounds})
        labels = list(session_ports)
        t = Table(f"POP3 relay: direct Dovecot vs mailproxy{' vs nginx' if 'nginx' in ports else ''} "
                  f"(median of interleaved rounds: sessions {rounds}, "
                  f"download {args.fetch_rounds} direct/mailproxy"
                  f"{f', {args.nginx_rounds} nginx' if 'nginx' in ports else ''}; "
                  f"{len(box.messages)} msgs, {box.total / 1e6:.1f} MB; {EARLY_NOTE})",
                  ["metric", *labels, "mailproxy/direct", f"{EARLY}/direct",
                   *(["nginx/direct"] if "nginx" in ports else []), "target"])

        def row(name, values, target):
            ratios = [ratio(values["mailproxy"], values["direct"]),
                      ratio(values.get(EARLY, NAN), values["direct"])]
            if "nginx" in values:
                ratios.append(ratio(values["nginx"], values["direct"]))
            t.add(name, *[values.get(k, NAN) for k in labels], *ratios, target)

        row("USER/PASS, STAT, UIDL, RETR all, QUIT (MB/s)", med(out["retr"], "mbps"), ">= 0.8x")
        row("  same session, time (s)", med(out["retr"], "seconds"), "")
        row("sessions/s, sequential (USER/PASS+STAT+QUIT)", med(out["seq"]), "")
        print(t.render())
        shas = {r["sha256"] for v in out["retr"].values() for r in v}
        print(f"\nRETR sha256 equal on every path and round: {shas == {box.sha256}}")
        print("  RETR MB/s rounds: " + "; ".join(f"{k} {spread(v, 'mbps')}" for k, v in out["retr"].items()))
        print("  seq rounds: " + "; ".join(f"{k} {spread(v)}" for k, v in out["seq"].items()))
        cpu_ms = {label: median([cpu / (rate * wall) * 1e3 for rate, cpu, wall in sink])
                  for label, sink in (("mailproxy", seq_cpu), (EARLY, early_cpu))}
        print("CPU (user+sys, from /proc) per sequential session: "
              + ", ".join(f"{label} {ms:.2f} ms" for label, ms in cpu_ms.items()))
        RESULTS["pop3"] = {"raw": out, "mailbox_bytes": box.total, "proxy_cpu_ms_per_session": cpu_ms}


# -- 3. TLS -------------------------------------------------------------------------------------------

def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and its children (nginx: the master and its worker), from /proc."""
    total = cpu_seconds(pid)
    try:
        children = open(f"/proc/{pid}/task/{pid}/children").read().split()
    except OSError:
        children = []
    return total + sum(cpu_seconds(int(child)) for child in children)


def bench_tls(args) -> None:
    log("tls: starting Dovecot with TLS, delivering the mailbox")
    with Env("tls", tls=True) as env:
        box = make_mailbox(args.messages)
        user, pw = env.user_with(box)
        sess_user, sess_pw = env.user_with(small_mailbox(10))
        proxy = env.proxy([tls_listener(env, "imaps", "imap"), tls_listener(env, "pop3s", "pop3")],
                          metrics=True)
        ctx = client_tls_context(str(env.ca_file))
        imaps = {"direct": env.dovecot.imaps_port, "mailproxy": proxy.port("imaps")}
        pop3s = {"direct": env.dovecot.pop3s_port, "mailproxy": proxy.port("pop3s")}
        pids = {"mailproxy": proxy.pid}
        if args.nginx and nginxmail.available():
            assert env.cert is not None
            ng = nginxmail.NginxMail(env.root / "nginx", env.dovecot.imap_port, env.dovecot.pop3_port,
                                     tls=env.cert)
            env.on_close(ng.stop)
            imaps["nginx"], pop3s["nginx"] = ng.imaps_port, ng.pop3s_port
            pids["nginx"] = ng.server.server.proc.pid
        versions = {}
        for label in imaps:
            fetch_runner(imaps[label], user, pw, box.sha256, ctx)()
            if label != "nginx":
                pop3_runner(pop3s[label], user, pw, box.sha256, ctx)()
            probe = Imap(imaps[label], ctx)
            versions[label] = f"{probe.sock.version()} {probe.sock.cipher()[0]}"
            probe.close()
        log(f"tls: {versions}")
        rounds, out = args.rounds, {}
        slow = {"nginx": args.nginx_rounds}
        seq_cpu: dict[str, list] = {k: [] for k in pids}

        def seq_runner(label: str, session: Callable[[], None]) -> Callable[[], Any]:
            run = sessions_runner(session, args.seconds, 1)
            if label in pids:
                run = with_cpu_of(lambda pid=pids[label]: tree_cpu_seconds(pid), run, seq_cpu[label])
            return run

        log("tls: IMAPS sessions/s")
        out["imap_seq"] = interleave(rounds, {k: seq_runner(k, lambda p=p: imap_session(
            p, sess_user, sess_pw, ctx)) for k, p in imaps.items()})
        out["imap_conc"] = interleave(rounds, {k: sessions_runner(
            lambda p=p: imap_session(p, sess_user, sess_pw, ctx), args.seconds, 16)
            for k, p in imaps.items()})
        log("tls: POP3S sessions/s")
        out["pop3_seq"] = interleave(rounds, {k: sessions_runner(
            lambda p=p: pop3_session(p, sess_user, sess_pw, ctx), args.seconds, 1) for k, p in pop3s.items()})
        log("tls: IMAPS NOOP round trips")
        out["noop"] = interleave(rounds, {k: noop_runner(p, sess_user, sess_pw, args.noops,
                                                         pids.get(k), ctx, tree_cpu_seconds)
                                          for k, p in imaps.items()})
        log(f"tls: IMAPS FETCH, POP3S RETR (nginx in the first {args.nginx_rounds} / 1 rounds)")
        out["fetch"] = interleave(args.fetch_rounds, {k: fetch_runner(p, user, pw, box.sha256, ctx)
                                                      for k, p in imaps.items()}, only_first=slow)
        out["retr"] = interleave(max(3, args.fetch_rounds // 2), {k: pop3_runner(p, user, pw, box.sha256, ctx)
                                                                  for k, p in pop3s.items()},
                                 only_first={"nginx": 1})
        labels = list(imaps)
        nginx = "nginx" in imaps
        t = Table(f"Implicit TLS from the client (same certificate; mailproxy and nginx relay in clear to "
                  f"Dovecot): direct TLS to Dovecot vs mailproxy{' vs nginx' if nginx else ''} (median of "
                  f"interleaved rounds: sessions and NOOP {rounds}, FETCH {args.fetch_rounds} (nginx "
                  f"{min(args.nginx_rounds, args.fetch_rounds)}), RETR {max(3, args.fetch_rounds // 2)} "
                  f"(nginx 1); full handshakes; {len(box.messages)} msgs, {box.total / 1e6:.1f} MB)",
                  ["metric", *(f"{k} TLS" for k in labels), "mailproxy/direct",
                   *(["mailproxy/nginx", "target"] if nginx else [])])
        for name, key, field, target in [
                ("IMAPS sessions/s, sequential", "imap_seq", None, ">= 1.0x"),
                ("IMAPS sessions/s, 16 concurrent", "imap_conc", None, ">= 1.0x"),
                ("POP3S sessions/s, sequential", "pop3_seq", None, ">= 1.0x"),
                ("IMAPS NOOP round trip p50 (us)", "noop", "p50_us", "<= 1.0x"),
                ("IMAPS NOOP round trip p99 (us)", "noop", "p99_us", ""),
                ("IMAPS UID FETCH 1:* BODY.PEEK[] (MB/s)", "fetch", "mbps", ">= 1.0x"),
                ("POP3S RETR all (MB/s)", "retr", "mbps", ">= 1.0x")]:
            m = med(out[key], field)
            t.add(name, *(m[k] for k in labels), ratio(m["mailproxy"], m["direct"]),
                  *([ratio(m["mailproxy"], m["nginx"]), target] if nginx else []))
        print(t.render())
        print(f"\nnegotiated: {versions}")
        for label, runs in seq_cpu.items():
            per_session = median([cpu / (rate * wall) * 1e3 for rate, cpu, wall in runs])
            per_noop = median([r["cpu_us"] for r in out["noop"][label]])
            print(f"{label} CPU (user+sys, from /proc{', master + worker' if label == 'nginx' else ''}): "
                  f"{per_session:.2f} ms per sequential IMAPS session, {per_noop:.0f} us per NOOP")
        for key in ("imap_seq", "imap_conc", "pop3_seq"):
            print(f"  {key} rounds: " + "; ".join(f"{k} {spread(v)}" for k, v in out[key].items()))
        RESULTS["tls"] = {"raw": out, "versions": versions, "mailbox_bytes": box.total}


# -- 4. metrics cost ----------------------------------------------------------------------------------

def bench_metrics(args) -> None:
    log("metrics: starting Dovecot, delivering the mailbox")
    with Env("metrics") as env:
        box = make_mailbox(args.messages)
        user, pw = env.user_with(box)
        sess_user, sess_pw = env.user_with(small_mailbox(10))
        off = env.proxy([{"name": "imap", "protocol": "imap"}], metrics=False)
        on = env.proxy([{"name": "imap", "protocol": "imap"}], metrics=True)
        ports = {"metrics off": off.port("imap"), "metrics on": on.port("imap")}
        for port in ports.values():
            fetch_runner(port, user, pw, box.sha256)()
        rounds = 2 * args.rounds + 1
        pids = {"metrics off": off.pid, "metrics on": on.pid}
        log("metrics: NOOP, FETCH")
        noop = interleave(rounds, {k: noop_runner(p, sess_user, sess_pw, args.noops, pids[k])
                                   for k, p in ports.items()})
        fetch_cpu: dict[str, list] = {k: [] for k in ports}
        fetch = interleave(args.fetch_rounds, {k: with_cpu(pids[k], fetch_runner(p, user, pw, box.sha256),
                                                           fetch_cpu[k]) for k, p in ports.items()})
        # CPU from /proc has 10 ms ticks: total over all rounds / total work, not a median of rounds
        cpu_noop = {k: sum(r["cpu_us"] for r in runs) / len(runs) for k, runs in noop.items()}
        cpu_mb = {k: 1e3 * sum(c for _, c, _ in runs) / (sum(r["bytes"] for r, _, _ in runs) / 1e6)
                  for k, runs in fetch_cpu.items()}
        t = Table(f"Metrics cost: mailproxy with `metrics:` vs without (median of interleaved rounds: NOOP "
                  f"{rounds}, FETCH {args.fetch_rounds}; CPU: total over all rounds)",
                  ["metric", "metrics off", "metrics on", "difference"])
        for name, m in [("UID FETCH 1:* BODY.PEEK[] (MB/s)", med(fetch, "mbps")),
                        ("NOOP round trip p50 (us)", med(noop, "p50_us")),
                        ("NOOP round trip p99 (us)", med(noop, "p99_us")),
                        ("mailproxy CPU per NOOP (us)", cpu_noop),
                        ("mailproxy CPU per MB of FETCH (ms)", cpu_mb)]:
            diff = 100 * (m["metrics on"] - m["metrics off"]) / m["metrics off"]
            t.add(name, m["metrics off"], m["metrics on"], f"{diff:+.1f}%")
        print(t.render())
        print("\n(target: within 5%; positive is slower for latency and CPU, faster for MB/s)")
        print("  fetch MB/s rounds: " + "; ".join(f"{k} {spread(v, 'mbps')}" for k, v in fetch.items()))
        print("  NOOP p50 rounds: " + "; ".join(f"{k} {spread(v, 'p50_us')}" for k, v in noop.items()))
        RESULTS["metrics"] = {"raw": {"noop": noop, "fetch": fetch}, "cpu_us_per_noop": cpu_noop,
                              "cpu_ms_per_mb": cpu_mb}


# -- 5. COMPRESS=DEFLATE through the relay ------------------------------------------------------------

ZLIB_DOVECOT = """
mail_plugins = $mail_plugins zlib
protocol imap {
  mail_plugins = $mail_plugins imap_zlib
}
"""


def bench_compress(args) -> None:
    """Bulk FETCH with and without COMPRESS=DEFLATE (RFC 4978, Dovecot's imap_zlib), direct and
    through the relay (which forwards the compressed bytes and inflates a copy for its parser),
    rounds interleaved; the proxy's CPU per MB of mail from /proc."""
    log("compress: starting Dovecot (imap_zlib), delivering the mailbox")
    with Env("compress", dovecot_config=ZLIB_DOVECOT) as env:
        box = make_mailbox(args.messages)
        user, pw = env.user_with(box)
        proxy = env.proxy([{"name": "imap", "protocol": "imap"}], metrics=True)
        ports = {"direct": env.dovecot.imap_port, "mailproxy": proxy.port("imap")}
        if args.nginx and nginxmail.available():
            ng = nginxmail.NginxMail(env.root / "nginx", env.dovecot.imap_port, env.dovecot.pop3_port)
            env.on_close(ng.stop)
            ports["nginx"] = ng.imap_port
        runners, cpu = {}, {}
        for label, port in ports.items():
            for mode in ("plain", "COMPRESS"):
                key = f"{label} {mode}"
                run = fetch_runner(port, user, pw, box.sha256, compress=mode == "COMPRESS")
                run()  # warm-up
                if label == "mailproxy":
                    cpu[key] = []
                    run = with_cpu(proxy.pid, run, cpu[key])
                runners[key] = run
        log("compress: bulk FETCH, plain and COMPRESS, interleaved")
        slow = {k: args.nginx_rounds for k in runners if k.startswith("nginx")}
        out = interleave(args.fetch_rounds, runners, only_first=slow)
        mbps = med(out, "mbps")
        t = Table(f"COMPRESS=DEFLATE through the relay: UID FETCH 1:* BODY.PEEK[] (median of "
                  f"{args.fetch_rounds} interleaved rounds; {len(box.messages)} msgs, "
                  f"{box.total / 1e6:.1f} MB, base64 bodies)", ["metric", *ports, "mailproxy/direct"])
        for mode in ("plain", "COMPRESS"):
            values = {k: mbps[f"{k} {mode}"] for k in ports}
            t.add(f"FETCH MB/s of mail, {mode}", *values.values(),
                  ratio(values["mailproxy"], values["direct"]))
        for mode in ("plain", "COMPRESS"):
            runs = cpu[f"mailproxy {mode}"]
            per_mb = 1e3 * sum(c for _, c, _ in runs) / (sum(r["bytes"] for r, _, _ in runs) / 1e6)
            t.add(f"mailproxy CPU per MB of mail, {mode} (ms)", "", f"{per_mb:.2f}",
                  *([""] if "nginx" in ports else []), "")
        wire = median([r["wire_in"] / r["bytes"] for r in out["direct COMPRESS"]])
        print(t.render())
        print(f"\ncompressed bytes on the wire per byte of mail (direct): {wire:.3f}")
        print("  fetch MB/s rounds: " + "; ".join(f"{k} {spread(v, 'mbps')}" for k, v in out.items()))
        RESULTS["compress"] = {"raw": out, "wire_ratio": wire}


BENCHES = {"imap": bench_imap, "pop3": bench_pop3, "tls": bench_tls, "metrics": bench_metrics,
           "compress": bench_compress}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benches", nargs="*", choices=[*BENCHES, []], default=[],
                        help="which benchmarks (default: all)")
    parser.add_argument("--messages", type=int, default=2000, help="messages in the bulk mailbox (2000)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per measurement (5)")
    parser.add_argument("--fetch-rounds", type=int, default=15,
                        help="interleaved rounds of the bulk FETCH / POP3 download (15; each is short)")
    parser.add_argument("--seconds", type=float, default=1.5, help="length of one sessions/s round (1.5)")
    parser.add_argument("--noops", type=int, default=2000, help="NOOPs per latency round (2000)")
    parser.add_argument("--nginx-rounds", type=int, default=2,
                        help="rounds for nginx's slow bulk transfers (2); its other rows use --rounds")
    parser.add_argument("--no-nginx", dest="nginx", action="store_false", help="skip the nginx column")
    parser.add_argument("--proxy-log-level", default="WARNING",
                        help="mailproxy's --log-level (WARNING: no per-session log line; INFO logs one)")
    parser.add_argument("--json", metavar="FILE", help="also write every raw result to FILE")
    parser.add_argument("--engine", choices=["tasks", "epoll"], default="",
                        help="mailproxy's relay.engine (default: the config's default)")
    args = parser.parse_args()
    selected = args.benches or list(BENCHES)
    common.PROXY_LOG_LEVEL = args.proxy_log_level
    common.RELAY_ENGINE = args.engine
    print(f"mailproxy relay benchmarks, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {platform.node()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, python {platform.python_version()}")
    print(f"options: {' '.join(sys.argv[1:]) or '(defaults)'}")
    started = time.perf_counter()
    for name in selected:
        t0 = time.perf_counter()
        BENCHES[name](args)
        log(f"{name}: {time.perf_counter() - t0:.0f} s")
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(RESULTS, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
