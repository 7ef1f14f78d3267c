#!/usr/bin/env python3
"""bench/heapprofile.py BEFORE.ms HELD.ms N [--rss-kib K] [--tcp-pages P] [--out FILE] [--dump]

Reads two massif detailed snapshots of certmapd (before N Pings were held, and
with them held; bench/heapprofile takes them), takes every allocation stack's
bytes in the second minus the first, divides by N, and sorts them into the
parts of a held Ping by the frames on the stack (RULES: the frame nearest the
allocation that names a part decides). Prints a markdown table; --dump lists
every stack instead, to check the rules.
"""
import argparse
import re
import sys

# jemalloc 5.3's size classes: 8, 16, 32, 48, 64, then four per doubling
# (80, 96, 112, 128, 160, 192, ...; the same above a page).
def jemalloc_class(n):
    if n <= 8:
        return 8
    if n <= 64:
        return -(-n // 16) * 16
    g = 64
    while 2 * g < n:
        g *= 2
    step = g // 4
    return -(-n // step) * step


NODE = re.compile(r"^( *)n(\d+): (\d+) (.*)$")


def parse(path):
    """{stack (tuple of frames, allocation function first): bytes} of the
    snapshot's heap tree, leaves only."""
    leaves = {}
    stack = []
    with open(path) as f:
        lines = f.readlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("heap_tree="))
    for line in lines[start + 1:]:
        m = NODE.match(line.rstrip("\n"))
        if not m:
            if line.startswith("#") or line.startswith("snapshot="):
                break
            continue
        depth, nchild, nbytes, what = len(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4)
        del stack[depth:]
        # "0x4848899: malloc (vg_replace_malloc.c:381)" -> "malloc (vg_replace_malloc.c:381)"
        frame = re.sub(r"^0x[0-9A-F]+: ", "", what)
        stack.append(frame)
        if nchild == 0 and depth > 0:
            key = tuple(stack[1:])
            leaves[key] = leaves.get(key, 0) + nbytes
    return leaves


def fname(frame):
    return frame.split(" ")[0]


# The parts of a held Ping, in the order of the table; the second field says
# which connection a part belongs to (client, backend) when it is one's alone.
PARTS = [
    ("SSL object (SSL_new: struct ssl_st with its record layer state, CERT copy, verify param; SSL_set_fd's socket BIO)", "client"),
    ("TLS read-ahead / record read buffer (allocated inside SSL_read)", "client"),
    ("TLS record write buffer (allocated inside SSL_write)", "client"),
    ("record layer: AES-GCM cipher contexts, read and write (EVP_CipherInit_ex)", "client"),
    ("SSL_SESSION (SSL_SESSION_new)", "client"),
    ("client's leaf certificate, decoded (X509 + its EC public key with a private copy of the P-256 group; extensions cached by tls_facts)", "client"),
    ("server's X25519 key share (EVP_PKEY_generate), kept until SSL_free", "client"),
    ("other OpenSSL state the handshake left (unexported libssl code: cipher lists, extensions, transcript hash copy)", "client"),
    ("certmapd: certificate facts (struct cert_facts, its strings)", "client"),
    ("certmapd: struct proxy_conn", "client"),
    ("certmapd: struct io, client", "client"),
    ("libevent: evbuffer structs of the client io (in, out, drain callback)", "client"),
    ("certmapd: struct stream (with its llhttp parser)", "client"),
    ("certmapd: request head buffer of the stream (proxy_head: bytes + header index)", "client"),
    ("certmapd: struct upstream (with its llhttp parser)", "backend"),
    ("certmapd: struct io, backend", "backend"),
    ("libevent: evbuffer structs of the backend io", "backend"),
    ("certmapd: upstream response head buffer", "backend"),
    ("libevent: evbuffer chains (bytes waiting in an io's input or output)", ""),
    ("libevent: event loop (epoll change list, fd map, timer heap)", ""),
    ("other", ""),
]


def part(prefix):
    for name, _ in PARTS:
        if name.startswith(prefix):
            return name
    raise KeyError(prefix)


OWN = re.compile(r"\((\w+)\.c:\d+\)")


def classify(stack):
    """The part an allocation stack (allocation first) belongs to."""
    names = [fname(f) for f in stack]
    own = [i for i, f in enumerate(stack) if OWN.search(f) and "vg_replace" not in f]
    first = names[own[0]] if own else ""
    caller = names[own[1]] if len(own) > 1 else ""
    lib = " < ".join(names[: own[0]] if own else names)
    chain = " < ".join(names)
    if re.match(r"(tls_facts_|sb_|name_rfc4514|name_asi|hex_dup|string_utf8|list_add|facts_)", first) and not lib:
        return part("certmapd: certificate facts")
    if "EVP_PKEY_generate" in lib:
        return part("server's X25519")
    if "EVP_CipherInit" in lib:
        return part("record layer")
    if "SSL_SESSION_new" in lib:
        return part("SSL_SESSION")
    if re.search(r"ASN1_|X509_new|d2i_X509|o2i_|EC_KEY|EC_GROUP|EC_POINT|BN_", lib) and (
        first == "handshake" or first.startswith("facts_")
    ):
        return part("client's leaf")
    if lib and (first == "io_accept" or (first == "proxy_conn_accept" and "SSL_new" in lib)):
        return part("SSL object")
    if lib and first in ("read_pass",) and "libssl" in " ".join(stack):
        return part("TLS read-ahead")
    if lib and first in ("write_pass",) and "libssl" in " ".join(stack):
        return part("TLS record write")
    if lib and first == "handshake":
        return part("other OpenSSL")
    if re.match(r"(evbuffer_new|evbuffer_add_cb)", lib):
        if "up_dial" in chain:
            return part("libevent: evbuffer structs of the backend")
        return part("libevent: evbuffer structs of the client")
    if re.search(r"evbuffer_", lib):
        return part("libevent: evbuffer chains")
    if re.search(r"(evmap|event_|epoll|min_heap)", lib):
        return part("libevent: event loop")
    if first == "stream_new":
        return part("certmapd: struct stream")
    if first in ("head_append", "proxy_head_field", "proxy_head_url", "proxy_head_value"):
        if "upstream.c" in " ".join(stack):
            return part("certmapd: upstream response head")
        return part("certmapd: request head")
    if first in ("up_connect", "upstream_acquire"):
        return part("certmapd: struct upstream")
    if first == "io_new":
        return part("certmapd: struct io, backend" if "up_dial" in chain else "certmapd: struct io, client")
    if first == "proxy_conn_accept" and not lib:
        return part("certmapd: struct proxy_conn")
    return part("other")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("before")
    ap.add_argument("held")
    ap.add_argument("n", type=int)
    ap.add_argument("--rss-kib", type=float)
    ap.add_argument("--sock-bytes", type=float)
    ap.add_argument("--slab-bytes", type=float)
    ap.add_argument("--out")
    ap.add_argument("--dump", action="store_true")
    a = ap.parse_args()
    b, h = parse(a.before), parse(a.held)
    diff = {}
    for k in set(b) | set(h):
        d = h.get(k, 0) - b.get(k, 0)
        if d != 0:
            diff[k] = d
    if a.dump:
        for k, d in sorted(diff.items(), key=lambda kv: -kv[1]):
            print(f"{d / a.n:9.1f} B  [{classify(k)}]")
            for fr in k[:14]:
                print(f"            {fr}")
        return
    parts = {}
    for k, d in diff.items():
        part = classify(k)
        per = d / a.n
        req, cls = parts.get(part, (0.0, 0.0))
        parts[part] = (req + per, cls + (jemalloc_class(round(per)) if per > 0 else per))
    total = sum(r for r, _ in parts.values())
    tcls = sum(c for _, c in parts.values())
    side = dict(PARTS)
    out = [f"Heap per held Ping, {a.n} held (massif: bytes requested, by allocation stack):", ""]
    out.append("| part | side | bytes per held Ping, requested | rounded up to jemalloc's size classes |")
    out.append("|---|---|---|---|")
    for part, _ in PARTS:
        req, cls = parts.get(part, (0.0, 0.0))
        if part == "other" and abs(req) < 0.5:
            continue
        out.append(f"| {part} | {side[part] or '—'} | {req:,.0f} | {cls:,.0f} |")
    def subtotal(pred):
        r = sum(parts.get(p, (0, 0))[0] for p, _ in PARTS if pred(p))
        c = sum(parts.get(p, (0, 0))[1] for p, _ in PARTS if pred(p))
        return f"{r:,.0f} | {c:,.0f}"
    openssl = lambda p: not p.startswith(("certmapd", "libevent")) and p != "other"
    out.append(f"| *subtotal: OpenSSL (SSL, session, certificate, keys)* | | {subtotal(openssl)} |")
    out.append(f"| *subtotal: certmapd and libevent, client side* | | {subtotal(lambda p: not openssl(p) and side[p] == 'client')} |")
    out.append(f"| *subtotal: the backend connection (upstream, its io, evbuffers)* | | {subtotal(lambda p: side[p] == 'backend')} |")
    out.append(f"| **heap, total** | | **{total:,.0f}** ({total / 1024:.1f} KiB) | {tcls:,.0f} ({tcls / 1024:.1f} KiB) |")
    if a.rss_kib is not None:
        rss = a.rss_kib * 1024 / a.n
        out.append(f"| RSS per held Ping, the same run natively (jemalloc) | | {rss:,.0f} ({rss / 1024:.1f} KiB) | |")
        out.append(f"| allocator: RSS − heap requested (size-class rounding, slab and page slack, metadata) | | {rss - total:,.0f} | of which rounding {tcls - total:,.0f} |")
    if a.sock_bytes is not None or a.slab_bytes:
        k = (a.sock_bytes or 0) / a.n
        sl = 2 * (a.slab_bytes or 0)
        out.append(f"| kernel, not in RSS: certmapd's 2 sockets per Ping: slab objects (tcp_sock, inode, file, dentry, epitem) + buffers charged (ss skmem r+w+f+o) | | {k + sl:,.0f} ({sl:,.0f} + {k:,.0f}) | |")
    text = "\n".join(out) + "\n"
    sys.stdout.write(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
