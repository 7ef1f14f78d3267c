#!/usr/bin/env python3
"""bench/scaling.py: the two halves of bench/run --scaling's report.

  scaling.py --locks SCRIPT [--title T]
      SCRIPT is `perf script -F comm,tid,period,ip,sym,dso` of a
      `perf record --call-graph dwarf` profile. Prints the share of the
      samples spent taking, holding the call of, or waiting for locks:
      pthread mutexes, read-write locks, the futex system call (the kernel
      side of a contended lock or a condition wait), OpenSSL's
      CRYPTO_THREAD_* wrappers; each split by who took the lock (the first
      frame on the stack, from the lock function outwards, that belongs to a
      known owner: mapping/cache.c's shards, metrics/, tls/vcache.c,
      tls/tickets.c, libevent, the allocator, OpenSSL, certmapd elsewhere).

  scaling.py --callers SCRIPT|- [--title T]
      SCRIPT is `perf script -F event,ip,sym,dso` of uprobe samples at libc's
      lock functions recorded with stacks: for each, who took the lock.

  scaling.py --report TSV --load FILE --machine M --sizes S [--profiles DIR]
      TSV has lines RUN FRONT WORKERS PHASE FIGURE VALUE (bench/scaling.sh).
      Prints results/scaling.md: for each front and phase, the median over
      the numbered runs and the spread (min-max) of requests/s, CPU µs per
      request, busy cores and per-core throughput, with 1 and 2 workers, and
      the ratio 2-worker per-core / 1-worker, per run and its median.
"""
import argparse
import collections
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from perfparts import fix_inlined, samples  # noqa: E402

LOCK_FN = re.compile(
    r"^(__?)*(pthread_(mutex|rwlock|spin|cond)_\w+|___pthread_\w+|__pthread_(mutex|rwlock)\w*|"
    r"lll_\w+|__lll_\w+|__futex\w*|futex_\w+|__GI___lll\w*|__GI___pthread\w*|syscall)$"
)
CRYPTO_LOCK = re.compile(r"^CRYPTO_THREAD_\w+$")


def kind_of(sym):
    """The lock family of a lock function's name."""
    if "rwlock" in sym:
        return "rwlock"
    if "cond" in sym:
        return "condvar"
    if "spin" in sym:
        return "spinlock"
    return "mutex"


def owner_of(frames, start):
    """Who took the lock: the first frame from START outwards with a known owner."""
    for sym, dso in frames[start:]:
        if sym.startswith("map_cache_"):
            return "identity cache (mapping/cache.c shards)", sym
        if sym.startswith("metrics_"):
            return "metrics", sym
        if sym.startswith("tls_vcache_"):
            return "chain-verify cache (tls/vcache.c)", sym
        if sym.startswith("keyset_") or sym == "ticket_cb":
            return "session-ticket keys (tls/tickets.c)", sym
        if sym.startswith("CRYPTO_THREAD_"):
            continue
        if dso.startswith("libcrypto") or dso.startswith("libssl"):
            return "OpenSSL", next((s for s, d in frames[start:] if (d.startswith("libcrypto") or
                                   d.startswith("libssl")) and not s.startswith("[") and
                                   not s.startswith("0x") and not CRYPTO_LOCK.match(s)), "?")
        if dso.startswith("libevent"):
            return "libevent (event_base lock)", sym
        if "jemalloc" in dso:
            return "jemalloc", sym
        if dso.startswith("libc") or dso.startswith("ld-linux") or sym == "[unknown]":
            continue
        return "certmapd, other", sym
    return "unknown", "?"


def locks(args):
    total = 0
    by = collections.Counter()          # (kind, owner) -> period
    callers = collections.Counter()     # (owner, caller) -> period
    futex = collections.Counter()       # owner -> period in the kernel's futex code
    crypto = 0
    for period, frames in samples(args.script):
        frames = fix_inlined(frames)
        total += period
        # leaf first: the kernel's frames, then user space
        in_futex = any("futex" in s for s, d in frames if d.startswith("[kernel"))
        i = 0
        while i < len(frames) and frames[i][1].startswith("[kernel"):
            i += 1
        j, kind = i, None
        while j < len(frames) and (LOCK_FN.match(frames[j][0]) or CRYPTO_LOCK.match(frames[j][0])):
            if LOCK_FN.match(frames[j][0]) and kind is None and frames[j][0] != "syscall":
                kind = kind_of(frames[j][0])
            j += 1
        if j == i and not in_futex:
            continue  # not in a lock function
        if in_futex and j == i:
            kind = kind or "futex (no lock function on the stack)"
        kind = kind or "CRYPTO_THREAD_* only"
        if any(CRYPTO_LOCK.match(s) for s, _ in frames[i:j]):
            crypto += period
        owner, caller = owner_of(frames, j)
        by[(("futex syscall, " if in_futex else "") + kind, owner)] += period
        callers[(owner, caller)] += period
        if in_futex:
            futex[owner] += period
    if total == 0:
        print("no samples")
        return
    pct = lambda v: 100.0 * v / total  # noqa: E731
    locked = sum(by.values())
    print(f"# {args.title or args.script}: lock functions and futex, share of all samples")
    print(f"samples (periods): {total}; in lock functions or futex: {pct(locked):.2f} %; "
          f"of it in the kernel's futex code: {pct(sum(futex.values())):.2f} %; "
          f"under OpenSSL's CRYPTO_THREAD_*: {pct(crypto):.2f} %")
    print()
    print("| where | taken by | share |")
    print("|---|---|---|")
    for (kind, owner), v in by.most_common():
        print(f"| {kind} | {owner} | {pct(v):.2f} % |")
    print()
    print("callers (the first frame outside the lock functions, per owner):")
    for (owner, caller), v in callers.most_common(15):
        print(f"  {pct(v):6.2f} %  {owner}: {caller}")


def callers(args):
    """Uprobe samples at the lock functions: who took them, per lock call."""
    by = collections.defaultdict(collections.Counter)  # event -> (owner, caller) -> samples
    event, frames = None, []
    path = "/dev/stdin" if args.callers == "-" else args.callers

    def flush():
        if event is None:
            return
        fr = fix_inlined(frames)
        i = 0
        while i < len(fr) and (LOCK_FN.match(fr[i][0]) or CRYPTO_LOCK.match(fr[i][0])):
            i += 1
        by[event][owner_of(fr, i)] += 1

    with open(path, errors="replace") as f:
        for line in f:
            if not line.strip():
                flush()
                event, frames = None, []
                continue
            if not line[0].isspace():
                flush()
                event, frames = line.split()[0].rstrip(":").replace("probe_libc:", ""), []
                continue
            parts = line.strip().split(" ", 1)
            if len(parts) < 2:
                continue
            m = re.match(r"(.*) \((.*)\)$", parts[1])
            sym, dso = (m.group(1), m.group(2)) if m else (parts[1], "")
            frames.append((re.sub(r"\+0x[0-9a-f]+$", "", sym), dso.rsplit("/", 1)[-1]))
    flush()
    print(f"# {args.title or args.callers}")
    for ev, c in sorted(by.items()):
        n = sum(c.values())
        print(f"\n{ev}: {n} samples; by owner:")
        owners = collections.Counter()
        for (owner, _), v in c.items():
            owners[owner] += v
        for owner, v in owners.most_common():
            print(f"  {100.0 * v / n:6.1f} %  {owner}")
        print("  top callers:")
        for (owner, caller), v in c.most_common(12):
            print(f"  {100.0 * v / n:6.1f} %  {owner}: {caller}")


def median(v):
    return statistics.median(v) if v else None


def fmt(v, d=1):
    if v is None:
        return "—"
    return f"{v:,.{d}f}".replace(",", " ")


def report(args):
    data = collections.defaultdict(dict)  # (front, w, phase, figure) -> {run: value}
    runs = set()
    lockcalls = collections.defaultdict(dict)  # (front, phase) -> {event: per request}
    with open(args.report) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) == 6 and p[0] == "lockcalls":
                lockcalls[(p[1], p[3])][p[4]] = p[5]
            if len(p) != 6 or not p[0].isdigit():
                continue
            runs.add(int(p[0]))
            data[(p[1], int(p[2]), p[3], p[4])][int(p[0])] = p[5]

    def nums(front, w, phase, fig):
        return [float(v) for v in data.get((front, w, phase, fig), {}).values() if v != ""]

    def per_run_ratio(front, w, phase, fig):
        base, this = data.get((front, 1, phase, fig), {}), data.get((front, w, phase, fig), {})
        return [float(base[r]) / float(this[r]) for r in sorted(this)
                if r in base and float(this[r]) > 0]

    fronts = []
    for front, w, phase, fig in data:
        if front not in fronts:
            fronts.append(front)
    ws = sorted({k[1] for k in data})
    phases = [("hs", "full handshake + 1 request (loadgen handshake)"),
              ("ka", "keep-alive request (loadgen keepalive)"),
              ("kab", "keep-alive request (ab -k)")]
    out = []
    say = out.append
    say("# Multi-worker scaling (bench/run --scaling)")
    say("")
    say(f"Machine: {args.machine}. Sizes: {args.sizes}. Runs: {len(runs)} "
        "(figures are the median, spread min–max in brackets).")
    say("")
    say("Load average (1, 5, 15 min) at the start and end of each run, from /proc/loadavg:")
    say("")
    with open(args.load) as f:
        for line in f:
            say(f"    {line.rstrip()}")
    say("")
    say("How to read: **CPU µs per request** is the front's utime + stime from /proc over the "
        "phase, divided by the requests completed; it does not depend on who else uses the cores. "
        "**per-core throughput** = requests/s per busy core = 10⁶ / CPU µs per request. "
        "**busy cores** = the front's CPU seconds / the phase's wall seconds: with 2 workers the "
        "load generators (one per worker) and the backend share cores 0-1 with the front, so "
        "requests/s is bounded by the machine, not by the front, and is given only as the "
        "clients saw it. **ratio** = 2-worker per-core throughput / 1-worker, per run (the "
        "median of the per-run ratios; goal ≥ 0.90); **user time only**: the same ratio from "
        "user CPU alone (what sharing costs in the front's own code, without the kernel's "
        "share, which with 2 workers includes cheaper same-core loopback wake-ups; /proc "
        "splits user and kernel time by tick sampling, so it is the rougher figure). **threads**: share of the front's CPU on "
        "its busiest two threads or processes (how SO_REUSEPORT spread the connections).")
    say("")
    for phase, title in phases:
        say(f"## {title}")
        say("")
        say("| front | workers | requests/s | CPU µs/request (user / kernel) | busy cores | "
            "per-core req/s | ratio 2w/1w per core | user time only | threads (run 1) |")
        say("|---|---|---|---|---|---|---|---|---|")
        for front in fronts:
            if not nums(front, ws[0], phase, "cpu_us"):
                continue
            for w in ws:
                cpu = nums(front, w, phase, "cpu_us")
                if not cpu:
                    continue
                rps = nums(front, w, phase, "rps")
                busy = nums(front, w, phase, "busy_cores")
                ratio = uratio = "—"
                if w > 1:
                    rs = per_run_ratio(front, w, phase, "cpu_us")
                    if rs:
                        ratio = (f"**{median(rs):.3f}** ({min(rs):.3f}–{max(rs):.3f})"
                                 + ("" if median(rs) >= 0.9 else " below 0.90"))
                    us = per_run_ratio(front, w, phase, "user_us")
                    if us:
                        uratio = f"{median(us):.3f} ({min(us):.3f}–{max(us):.3f})"
                th = data.get((front, w, phase, "threads"), {}).get(min(runs), "")
                say(f"| {front} | {w} | {fmt(median(rps), 0)} ({fmt(min(rps), 0)}–{fmt(max(rps), 0)}) | "
                    f"{fmt(median(cpu), 2)} ({fmt(min(cpu), 2)}–{fmt(max(cpu), 2)}) "
                    f"({fmt(median(nums(front, w, phase, 'user_us')), 2)} / "
                    f"{fmt(median(nums(front, w, phase, 'sys_us')), 2)}) | "
                    f"{fmt(median(busy), 2)} | {fmt(1e6 / median(cpu), 0)} | {ratio} | {uratio} | {th} |")
        say("")
    say("certmapd_ldif is certmapd with `[mapping] source = ldif` (4 001 accounts, `methods = upn`): "
        "in its handshake phase each loadgen presents its own 2 000 leaves from bench/mkleaves in "
        "turn (a cache miss the first time, a hit after: half and half with 1 and 2 workers "
        "alike), its keep-alive phases one certificate (good.crt), so "
        "every request of every worker looks up the same key in the same shard of the identity "
        "cache.")
    say("")
    if lockcalls:
        say("## Lock acquisitions per request (uprobes on libc, 2 workers)")
        say("")
        say("Calls per request in the front's threads, counted by `perf stat` on uprobes at "
            "libc's `pthread_mutex_lock`, `pthread_rwlock_rdlock` and `pthread_rwlock_wrlock` "
            "(OpenSSL 3.0's `CRYPTO_THREAD_read_lock`/`write_lock` are one rwlock call each); "
            "a separate run, the probes slow the front.")
        say("")
        say("| front | phase | mutex lock | rwlock read | rwlock write |")
        say("|---|---|---|---|---|")
        for (front, phase), ev in sorted(lockcalls.items()):
            say(f"| {front} | {phase} | {ev.get('pthread_mutex_lock', '—')} | "
                f"{ev.get('pthread_rwlock_rdlock', '—')} | {ev.get('pthread_rwlock_wrlock', '—')} |")
        say("")
    if args.profiles:
        files = sorted(f for f in os.listdir(args.profiles)
                       if f.startswith("scaling-locks-") or f.startswith("scaling-perflock-"))
        if files:
            say("## Locks in the 2-worker profiles (perf record -g, DWARF stacks)")
            say("")
        for name in files:
            say(f"### {name}")
            say("")
            with open(os.path.join(args.profiles, name)) as f:
                body = f.read().rstrip("\n")
            if name.startswith("scaling-perflock-"):
                say("```")
                say(body)
                say("```")
            else:
                say(body.replace("\n  ", "\n    ").replace("callers (", "\ncallers ("))
            say("")
    print("\n".join(out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--locks")
    ap.add_argument("--callers")
    ap.add_argument("--title")
    ap.add_argument("--report")
    ap.add_argument("--load")
    ap.add_argument("--machine", default="")
    ap.add_argument("--sizes", default="")
    ap.add_argument("--profiles")
    args = ap.parse_args()
    if args.locks:
        args.script = args.locks
        locks(args)
    elif args.callers:
        callers(args)
    elif args.report:
        report(args)
    else:
        ap.error("--locks or --report")


if __name__ == "__main__":
    main()
