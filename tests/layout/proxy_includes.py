#!/usr/bin/env python3
"""proxy/'s include graph is a DAG, in the order the design sets:
main -> worker -> {limit, conn}; conn -> stream -> {upstream, http, accesslog, mapping};
upstream -> {http, io}; conn -> ppread -> proxyproto (the PROXY protocol). A part may include only parts below it. proxy/ also
never includes OpenSSL or libevent's bufferevent headers itself: it reaches
OpenSSL through tls/ and sockets through io/. Run: proxy_includes.py SRC_DIR."""
import os
import re
import sys

# Each file of proxy/ belongs to a part; lower rank = higher in the graph.
PART_OF = {
    "main.c": "main",
    "proxy.h": "worker", "worker.c": "worker",
    "limit.h": "limit", "limit.c": "limit",
    "conn.h": "conn", "conn.c": "conn",
    "stream.h": "stream", "stream.c": "stream",
    "upstream.h": "upstream", "upstream_int.h": "upstream", "upstream.c": "upstream",
    "pool.c": "upstream", "backends.c": "upstream", "health.c": "upstream",
    "http.h": "http", "http.c": "http",
    "accesslog.h": "accesslog", "accesslog.c": "accesslog",
    "ppread.h": "ppread", "ppread.c": "ppread",
    "proxyproto.h": "proxyproto", "proxyproto.c": "proxyproto",
}
RANK = {"main": 0, "worker": 1, "limit": 2, "conn": 2, "stream": 3, "upstream": 4, "http": 5, "accesslog": 5,
        "ppread": 3, "proxyproto": 4}
FORBIDDEN = re.compile(r'#include\s*<(openssl/[^>]+|event2/bufferevent[^>]*)>')


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "../..")
    pdir = os.path.join(src, "proxy")
    problems, edges = [], set()
    for name in sorted(os.listdir(pdir)):
        if not name.endswith((".c", ".h")):
            continue
        if name not in PART_OF:
            problems.append(f"proxy/{name}: not placed in the graph (add it to {__file__})")
            continue
        part = PART_OF[name]
        text = open(os.path.join(pdir, name)).read()
        for m in FORBIDDEN.finditer(text):
            problems.append(f"proxy/{name}: includes <{m.group(1)}> (proxy/ goes through tls/ and io/)")
        if re.search(r"\bSSL_[a-z]", text):
            problems.append(f"proxy/{name}: calls OpenSSL (SSL_*) directly")
        for inc in re.findall(r'#include\s*"proxy/([^"]+)"', text):
            other = PART_OF.get(inc)
            if other is None:
                problems.append(f"proxy/{name}: includes unknown proxy/{inc}")
                continue
            if other == part:
                continue
            edges.add((part, other))
            if RANK[other] <= RANK[part]:
                problems.append(f"proxy/{name} ({part}) includes proxy/{inc} ({other}): "
                                f"{other} is not below {part}")
    for p in problems:
        print("FAIL", p)
    print("edges:", ", ".join(f"{a}->{b}" for a, b in sorted(edges, key=lambda e: (RANK[e[0]], e))))
    print(f"{0 if problems else 1} passed, {1 if problems else 0} failed")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
