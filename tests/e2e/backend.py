#!/usr/bin/env python3
"""A real HTTP/1.1 backend for certmapd's tests and demo (stdlib only).

It answers every request with JSON describing what it received (method,
target, headers in order, body length and SHA-256) and appends the same
record, one JSON object per line, to --log, so a test can prove what reached
the backend and what did not.

Behaviour is chosen per request with query parameters, which certmapd
forwards untouched:
  delay=S      wait S seconds (float) before answering (long polls)
  size=N       answer with an N-byte deterministic body instead of JSON
  chunked=1    send the body chunked (with size=N: in 64 KiB chunks)
  close=1      answer with Connection: close and close
  abort=1      close the connection without answering
  status=N     answer with status N
  nolength=1   no Content-Length, no chunking: the close ends the body
  dropnext=1   answer, then close this connection without answering when its
               next request arrives (a server closing an idle connection just
               as a client reuses it)
  early=1      answer (with status=N, Connection: close) right after the head,
               without reading the body, and close: unread bytes make the close
               a reset, and the sender's next write fails; with status=reset,
               close at once without answering
  hop=1        add hop-by-hop headers to the answer (Keep-Alive, Proxy-Connection,
               a header named by Connection), which certmapd must drop
With --tls-cert/--tls-key it serves HTTPS instead of plain HTTP. With
--events it appends one JSON line per connection end ({"event": "closed",
"conn_id", "requests", "how": "eof" | "eof_in_body" | ...}) so a test can prove
that certmapd closed its backend connection.
It also keeps each connection alive (HTTP/1.1) and reports, in every
answer, how many requests this connection has carried (X-Backend-Conn-Requests)
and a connection id (X-Backend-Conn-Id).
"""
import argparse
import hashlib
import itertools
import json
import socket
import socketserver
import sys
import threading
import time
import urllib.parse

CONN_IDS = itertools.count(1)
LOG_LOCK = threading.Lock()


def pattern(n):
    """n bytes of a deterministic pattern (tests compute the same)."""
    block = bytes(range(256)) * 256
    out = bytearray()
    while len(out) < n:
        out += block[: n - len(out)]
    return bytes(out)


def render(record):
    """The record as JSON a person can read: one line per field, one per header."""
    lines = ["{"]
    items = list(record.items())
    for i, (k, v) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        if k == "headers":
            lines.append(' "headers": [')
            lines += [f"  {json.dumps(list(h))}" + ("," if j < len(v) - 1 else "")
                      for j, h in enumerate(v)]
            lines.append(" ]" + comma)
        else:
            lines.append(f" {json.dumps(k)}: {json.dumps(v)}{comma}")
    return "\n".join(lines + ["}"]) + "\n"


class Handler(socketserver.StreamRequestHandler):
    rbufsize = 65536
    disable_nagle_algorithm = True  # head and body are separate writes

    def read_head(self):
        lines = []
        while True:
            line = self.rfile.readline(65537)
            if not line:
                return None
            if line in (b"\r\n", b"\n"):
                break
            lines.append(line.rstrip(b"\r\n").decode("latin-1"))
        return lines

    def read_exact(self, left, h):
        """Reads <left> body bytes into the hash <h>; returns how many."""
        n = left
        while left:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                raise ConnectionError("eof in body")
            h.update(chunk)
            left -= len(chunk)
        return n

    def read_body(self, headers):
        te = [v for k, v in headers if k.lower() == "transfer-encoding"]
        cl = [v for k, v in headers if k.lower() == "content-length"]
        h = hashlib.sha256()
        total = 0
        if te:
            while True:
                size_line = self.rfile.readline(1024).strip()
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += self.read_exact(size, h)
                self.rfile.readline(4)
        elif cl:
            total += self.read_exact(int(cl[0]), h)
        return total, h.hexdigest(), bool(te)

    def event(self, conn_id, served, how):
        if self.server.events_path:
            rec = {"event": "closed", "conn_id": conn_id, "requests": served, "how": how,
                   "time": time.time()}
            with LOG_LOCK, open(self.server.events_path, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def handle(self):
        conn_id = next(CONN_IDS)
        served = [0]
        how = self.serve(conn_id, served)
        self.event(conn_id, served[0], how)

    def serve(self, conn_id, counter):
        served = 0
        drop_next = False
        while True:
            try:
                head = self.read_head()
            except (ConnectionError, OSError):
                return "error"
            if not head:
                return "eof"
            if drop_next:
                return "dropped"
            method, target, version = head[0].split(" ", 2)
            headers = []
            for line in head[1:]:
                k, _, v = line.partition(":")
                headers.append((k.strip(), v.strip()))
            q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(target).query))
            if q.get("early") == "1":
                if q.get("status") == "reset":
                    return "early"
                self.wfile.write(f"HTTP/1.1 {q.get('status', '200')} Early\r\n"
                                 "Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
                self.wfile.flush()
                return "early"
            try:
                body_len, body_sha, was_chunked = self.read_body(headers)
            except (ConnectionError, OSError, ValueError):
                return "eof_in_body"
            served += 1
            counter[0] = served
            record = {
                "method": method, "target": target, "version": version,
                "headers": headers, "body_len": body_len, "body_sha256": body_sha,
                "chunked": was_chunked, "conn_id": conn_id, "conn_requests": served,
                "time": time.time(),
            }
            if self.server.log_path:
                with LOG_LOCK, open(self.server.log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            if "delay" in q:
                time.sleep(float(q["delay"]))
            if q.get("abort") == "1":
                return "abort"
            drop_next = q.get("dropnext") == "1"
            status = int(q.get("status", "200"))
            close = q.get("close") == "1" or q.get("nolength") == "1"
            if "size" in q:
                body = pattern(int(q["size"]))
                ctype = "application/octet-stream"
            else:
                body = render(record).encode()
                ctype = "application/json"
            if method == "HEAD":
                send_body = False
            else:
                send_body = status not in (204, 304)
            out = [f"HTTP/1.1 {status} Answer", f"Content-Type: {ctype}",
                   f"X-Backend-Conn-Id: {conn_id}", f"X-Backend-Conn-Requests: {served}"]
            chunked = q.get("chunked") == "1"
            if q.get("nolength") == "1":
                pass
            elif chunked:
                out.append("Transfer-Encoding: chunked")
            else:
                out.append(f"Content-Length: {len(body)}")
            if q.get("hop") == "1":
                out += ["Keep-Alive: timeout=99", "Proxy-Connection: keep-alive",
                        "X-Hop-Secret: 1", "X-End-To-End: 1"]
            if close:
                out.append("Connection: close")
            if q.get("hop") == "1":
                out.append("Connection: X-Hop-Secret")
            try:
                self.wfile.write(("\r\n".join(out) + "\r\n\r\n").encode())
                if send_body:
                    if chunked and q.get("nolength") != "1":
                        for i in range(0, len(body), 65536):
                            part = body[i:i + 65536]
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                        self.wfile.write(b"0\r\n\r\n")
                    else:
                        self.wfile.write(body)
                self.wfile.flush()
            except OSError:
                return "write_error"
            if close:
                return "close"


class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    tls = None  # an ssl.SSLContext for HTTPS

    def finish_request(self, request, client_address):
        # The TLS handshake runs in the connection's own thread, never in the accept loop.
        if self.tls is not None:
            try:
                request.settimeout(10)
                request = self.tls.wrap_socket(request, server_side=True)
                request.settimeout(None)
            except (OSError, ValueError):
                return
            try:
                self.RequestHandlerClass(request, client_address, self)
            finally:
                request.close()
            return
        self.RequestHandlerClass(request, client_address, self)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--log", default=None, help="append one JSON line per request here")
    ap.add_argument("--port-file", default=None, help="write the bound port here once listening")
    ap.add_argument("--events", default=None, help="append one JSON line per closed connection here")
    ap.add_argument("--tls-cert", default=None, help="PEM certificate chain: serve HTTPS")
    ap.add_argument("--tls-key", default=None, help="PEM key of --tls-cert")
    args = ap.parse_args()
    srv = Server((args.host, args.port), Handler)
    srv.log_path = args.log
    srv.events_path = args.events
    if args.tls_cert:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        srv.tls = ctx
    port = srv.server_address[1]
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write(str(port))
        import os
        os.replace(args.port_file + ".tmp", args.port_file)
    print(f"backend listening on {args.host}:{port}", file=sys.stderr, flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
