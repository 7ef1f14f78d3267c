#!/usr/bin/env python3
"""bench/perfparts.py SCRIPT [--requests N] [--cpu-us U] [--top K]

Sorts the samples of a `perf record --call-graph dwarf` profile of certmapd
(read as `perf script -F comm,tid,period,ip,sym,dso`) into the parts of a
request: the kernel's work, by the system call that entered it, and user
space by component, with the whole stack deciding (a malloc inside SSL_read
counts as malloc, a memcpy inside head building as head building). With
--requests, the samples' periods (cpu-clock: ns) are turned into µs per
request; with --cpu-us, the shares are also scaled to that figure (server CPU
per request from /proc in a run without perf, which perturbs less). Then the
callers of malloc/free (the first frame outside the allocator and libc), the
top self symbols, and the system calls' shares.
"""
import argparse
import collections
import re
import sys


def samples(path):
    """(period, [(sym, dso), ...] leaf first) for each sample."""
    period, frames = None, []
    head = re.compile(r"^\S.*?\s(\d+)\s*$")
    with open(path, errors="replace") as f:
        for line in f:
            if not line.strip():
                if period is not None:
                    yield period, frames
                period, frames = None, []
                continue
            if not line[0].isspace():
                m = head.match(line.rstrip("\n"))
                period = int(m.group(1)) if m else 1
                frames = []
                continue
            parts = line.strip().split(" ", 1)
            if len(parts) < 2:
                continue
            rest = parts[1]
            m = re.match(r"(.*) \((.*)\)$", rest)
            sym, dso = (m.group(1), m.group(2)) if m else (rest, "")
            sym = re.sub(r"\+0x[0-9a-f]+$", "", sym)
            frames.append((sym, dso.rsplit("/", 1)[-1]))
    if period is not None:
        yield period, frames


def fix_inlined(frames):
    """An inlined function is printed as "(inlined)": it is in the library of
    the next real frame (the one it was inlined into)."""
    out = list(frames)
    for i in range(len(out) - 1, -1, -1):
        if out[i][1] == "inlined":
            out[i] = (out[i][0], out[i + 1][1] if i + 1 < len(out) else "?")
    return out


def is_kernel(fr):
    return fr[1] in ("[kernel.kallsyms]", "[unknown]") and fr[0] != "[unknown]" or fr[1].startswith("[kernel")


def kernel_part(user):
    names = [s for s, _ in user]
    for n in names:
        if n.startswith(("accept", "__libc_accept", "__GI_accept")) or n == "accept4":
            return "kernel: accept4(2)"
        if n in ("__close", "close", "__GI___close", "__libc_close") or "close" in n and n.startswith("__"):
            return "kernel: close(2)"
        if n.startswith(("__libc_connect", "connect")):
            return "kernel: connect(2) to the backend"
    if "SSL_write" in names or "SSL_write_ex" in names:
        return "kernel: write(2) of TLS records to the client"
    if "evbuffer_write_atmost" in names or "__GI___writev" in names or "writev" in names:
        return "kernel: writev(2) of requests to the backend"
    if "SSL_read" in names or "SSL_read_ex" in names:
        return "kernel: read(2) from the client"
    if "read_pass" in names:
        return "kernel: read(2) from the backend"
    if "epoll_wait" in names:
        return "kernel: epoll_wait(2)"
    if any("handshake" == n for n in names):
        if names and "write" in names[0]:
            return "kernel: write(2) of the server's handshake flights and ticket"
        if names and "read" in names[0]:
            return "kernel: read(2) of the client's handshake flights"
        return "kernel: other (in a TLS handshake: getpid, interrupts, page faults)"
    return "kernel: other (page faults, connect, accept, close)"


def user_part(frames):
    names = [s for s, _ in frames]
    leaf_sym, leaf_dso = frames[0]
    if any(n == "handshake" for n in names) and "read_pass" not in names and "write_pass" not in names:
        return "user: TLS handshakes (the 32 connections' own)"
    if leaf_dso.startswith("libjemalloc"):
        return "user: malloc/free/realloc (jemalloc)"
    if re.search(r"pthread_(mutex|getspecific|disable_asynccancel|enable_asynccancel)", leaf_sym):
        return "user: locks and cancellation points (libc)"
    if leaf_sym.startswith("ERR_") or any(n.startswith("ERR_clear_error") for n in names[:2]):
        return "user: OpenSSL error queue (ERR_clear_error, ERR_*)"
    if any(n in ("SSL_write", "SSL_write_ex", "SSL_read", "SSL_read_ex", "SSL_has_pending",
                 "SSL_get_error", "SSL_pending") for n in names):
        if leaf_dso.startswith("libcrypto"):
            return "user: TLS records, libcrypto (AES-GCM, EVP, BIO)"
        return "user: TLS records, libssl"
    if "proxy_http_request_head" in names:
        return "user: building the request head for the backend"
    if "proxy_http_response_head" in names or "up_head" in names:
        return "user: building the response head for the client"
    if "up_parse" in names or "up_read_cb" in names:
        if leaf_sym.startswith("llhttp") or leaf_dso == "certmapd":
            return "user: parsing the response (llhttp, head capture)"
    if "stream_feed" in names and (leaf_sym.startswith("llhttp") or leaf_dso == "certmapd"):
        return "user: parsing the request (llhttp, head capture, policy)"
    if leaf_dso.startswith("libevent"):
        if leaf_sym.startswith("evbuffer"):
            return "user: libevent evbuffers"
        return "user: libevent event loop"
    if leaf_dso == "[vdso]":
        return "user: clock_gettime (vdso)"
    if leaf_dso.startswith("libc"):
        return "user: libc (memcpy, strlen, syscall wrappers...)"
    if leaf_dso == "certmapd":
        return "user: certmapd, other"
    return "user: other (" + leaf_dso + ")"


HS_RULES = [
    ("user: session ticket: i2d_SSL_SESSION twice and d2i_SSL_SESSION of the copy (the client's leaf decoded again)",
     {"d2i_SSL_SESSION", "i2d_SSL_SESSION"}),
    ("user: certmapd verdict and certificate facts (tls_conn_verdict, tls_facts_from_x509)",
     {"tls_conn_verdict", "conn_judge_certificate", "tls_facts_from_x509", "verdict_now"}),
    ("user: chain verification (X509_verify_cert, the verify cache)", {"X509_verify_cert", "tls_verify_cb"}),
    ("user: decoding the client's certificates in libssl (d2i_X509: leaf + issuing CA)",
     {"ASN1_item_d2i_ex", "d2i_X509", "X509_new_ex", "ASN1_item_d2i"}),
    ("user: ECDSA P-256 sign (server CertificateVerify)", {"EVP_DigestSignFinal", "EVP_DigestSign", "ECDSA_sign", "EVP_DigestSignInit_ex"}),
    ("user: ECDSA P-256 verify (client CertificateVerify)", {"EVP_DigestVerifyFinal", "EVP_DigestVerify", "EVP_DigestVerifyInit_ex"}),
    ("user: X25519 key share (generate, derive)", {"EVP_PKEY_generate", "EVP_PKEY_derive", "EVP_PKEY_keygen", "EVP_PKEY_derive_set_peer_ex"}),
    ("user: key schedule, Finished MACs, transcript hash (HKDF, HMAC, SHA-256)",
     {"EVP_KDF_derive", "EVP_Q_mac", "EVP_DigestUpdate", "EVP_DigestFinal_ex", "EVP_MD_CTX_copy_ex", "EVP_DigestInit_ex", "EVP_MD_fetch", "EVP_KDF_fetch"}),
    ("user: record encryption (EVP_Cipher*)", {"EVP_CipherInit_ex", "EVP_CipherUpdate", "EVP_EncryptUpdate", "EVP_DecryptUpdate", "EVP_CipherFinal_ex", "EVP_CIPHER_fetch"}),
    ("user: random numbers (RAND_bytes)", {"RAND_bytes_ex", "EVP_RAND_generate", "RAND_priv_bytes_ex"}),
    ("user: SSL_new, SSL_free, accept and close", {"SSL_new", "SSL_free", "tls_conn_new", "tls_conn_free", "really_free", "proxy_conn_accept", "conn_close"}),
    ("user: the proxied request (parsing, heads, backend)", {"stream_feed", "up_read_cb", "conn_feed"}),
]


def hs_part(frames):
    names = {s for s, _ in frames}
    for part, keys in HS_RULES:
        if names & keys:
            return part
    leaf_dso = frames[0][1]
    if "handshake" in names:
        if leaf_dso.startswith(("libssl", "libcrypto", "libc", "libjemalloc")):
            return "user: libssl handshake, other (state machine, extensions, fetches, malloc)"
    if "write_pass" in names or "read_pass" in names:
        return "user: TLS records and I/O (SSL_read, SSL_write)"
    if leaf_dso.startswith("libevent"):
        return "user: libevent event loop"
    return "user: other (" + leaf_dso + ")"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("script")
    ap.add_argument("--requests", type=int)
    ap.add_argument("--cpu-us", type=float)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--handshake", action="store_true",
                    help="sort user space by the handshake's steps instead")
    a = ap.parse_args()
    parts = collections.Counter()
    mallocs = collections.Counter()
    selfsym = collections.Counter()
    total = 0
    for period, frames in samples(a.script):
        if not frames:
            continue
        frames = fix_inlined(frames)
        total += period
        k = 0
        while k < len(frames) and is_kernel(frames[k]):
            k += 1
        user = frames[k:]
        if k > 0:
            part = kernel_part(user)
        elif a.handshake:
            part = hs_part(frames)
        else:
            part = user_part(frames)
        parts[part] += period
        selfsym[f"{frames[0][0]} ({frames[0][1]})"] += period
        if part.startswith("user: malloc"):
            callers = [f"{s}@{d.split('.so')[0]}" if s == "[unknown]" else s
                       for s, d in frames if not d.startswith(("libjemalloc", "libc"))]
            own = [s for s, d in frames if d == "certmapd"]
            mallocs[(callers[0] if callers else "?") + " < " + (own[0] if own else "?")] += period
    if total == 0:
        sys.exit("no samples")
    if a.handshake:
        print("Sorted by the handshake's steps (user space), kernel by system call.")
        print()

    def fmt(v):
        share = v / total
        cols = [f"{100 * share:5.1f} %"]
        if a.requests:
            cols.append(f"{v / 1000 / a.requests:6.2f}")
        if a.cpu_us:
            cols.append(f"{share * a.cpu_us:6.2f}")
        return " | ".join(cols)

    hdr = ["share"]
    if a.requests:
        hdr.append("µs per request (perf)")
    if a.cpu_us:
        hdr.append(f"µs per request (of {a.cpu_us} from /proc)")
    print("| part | " + " | ".join(hdr) + " |")
    print("|---|" + "---|" * len(hdr))
    ksum = sum(v for p, v in parts.items() if p.startswith("kernel"))
    usum = total - ksum
    for p, v in sorted(parts.items(), key=lambda kv: (not kv[0].startswith("kernel"), -kv[1])):
        print(f"| {p} | {fmt(v)} |")
    print(f"| **kernel, all** | {fmt(ksum)} |")
    print(f"| **user, all** | {fmt(usum)} |")
    print()
    print("malloc/free/realloc by caller (first frame outside jemalloc and libc < nearest certmapd frame):")
    print()
    for c, v in mallocs.most_common(12):
        print(f"- {c}: {fmt(v)}")
    print()
    print(f"top {a.top} symbols, self:")
    print()
    for s, v in selfsym.most_common(a.top):
        print(f"- {s}: {fmt(v)}")


if __name__ == "__main__":
    main()
