"""A TCP relay on 127.0.0.1 that can make a directory slow, stalled or gone.

Relays 127.0.0.1:PORT to a target (default 127.0.0.1:636) byte for byte (TLS
passes through untouched). Everything the server sends can be held back by a
delay (latency, not throughput: a chunk received at t leaves at t + delay),
the relay can be paused (nothing moves either way until resumed) and every
open connection can be cut, to prove that certmapd keeps answering from its
cache and fails closed while the directory is slow or unreachable.

As a module:
    p = SlowProxy(target_port=636).start()    # p.port, p.uri == "ldaps://127.0.0.1:PORT"
    p.set_delay(3.0); p.pause(); p.resume(); p.cut(); p.stop()

As a program (for tests in C or shell):
    slowproxy.py [--port N] [--port-file F] [--target-port 636] [--delay S] [--control F]
  --port-file: the chosen port is written there once listening.
  --control F: F is re-read whenever it changes; it holds "delay S", "pause",
               "resume" or "cut", one command per line (applied in order).
  SIGTERM stops it; SIGUSR1 cuts every connection.
"""
import argparse
import os
import select
import signal
import socket
import sys
import threading
import time
from collections import deque

HOST = "127.0.0.1"


class _Pipe:
    """One direction of one relayed connection: reader → delayed queue → writer."""

    def __init__(self, proxy, src, dst, delayed):
        self.proxy, self.src, self.dst, self.delayed = proxy, src, dst, delayed
        self.queue = deque()
        self.cond = threading.Condition()
        self.eof = False

    def read_loop(self):
        try:
            while True:
                data = self.src.recv(65536)
                if not data:
                    break
                delay = self.proxy.delay if self.delayed else 0.0
                with self.cond:
                    self.queue.append((time.monotonic() + delay, data))
                    self.cond.notify()
        except OSError:
            pass
        with self.cond:
            self.eof = True
            self.cond.notify()

    def write_loop(self):
        try:
            while True:
                with self.cond:
                    while not self.queue and not self.eof:
                        self.cond.wait(0.1)
                    if not self.queue and self.eof:
                        break
                    due, data = self.queue[0]
                wait = due - time.monotonic()
                if wait > 0 or self.proxy.paused.is_set():
                    time.sleep(min(max(wait, 0.01), 0.05))
                    continue
                with self.cond:
                    self.queue.popleft()
                self.dst.sendall(data)
            self.dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class SlowProxy:
    def __init__(self, port=0, target_host=HOST, target_port=636, delay=0.0):
        self.target = (target_host, target_port)
        self.delay = float(delay)
        self.paused = threading.Event()
        self.lock = threading.Lock()
        self.conns = set()
        self.stopping = threading.Event()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((HOST, port))
        self.port = self.listener.getsockname()[1]
        self.uri = f"ldaps://{HOST}:{self.port}"
        self.thread = None

    def start(self):
        self.listener.listen(64)
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()
        return self

    def set_delay(self, seconds):
        """Delay for everything the server sends from now on."""
        self.delay = float(seconds)

    def pause(self):
        """Nothing moves either way (connections stay open) until resume()."""
        self.paused.set()

    def resume(self):
        self.paused.clear()

    def cut(self):
        """Resets every open connection, as a crashed server or a dropped route would."""
        with self.lock:
            conns, self.conns = self.conns, set()
        for s in conns:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                s.shutdown(socket.SHUT_RD)  # wakes the pump blocked in recv()
                s.close()
            except OSError:
                pass

    def stop(self):
        self.stopping.set()
        try:
            self.listener.close()
        except OSError:
            pass
        self.cut()

    def connections(self):
        with self.lock:
            return len(self.conns) // 2

    def _accept_loop(self):
        while not self.stopping.is_set():
            try:
                r, _, _ = select.select([self.listener], [], [], 0.2)
                if not r:
                    continue
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns.update((client, server))
            up = _Pipe(self, client, server, delayed=False)
            down = _Pipe(self, server, client, delayed=True)
            for fn in (up.read_loop, up.write_loop, down.read_loop, down.write_loop):
                threading.Thread(target=fn, daemon=True).start()


def _apply(proxy, text):
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "delay" and len(words) == 2:
            proxy.set_delay(float(words[1]))
        elif words[0] == "pause":
            proxy.pause()
        elif words[0] == "resume":
            proxy.resume()
        elif words[0] == "cut":
            proxy.cut()
        else:
            print(f"slowproxy: unknown command {line!r}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    ap.add_argument("--target-port", type=int, default=636)
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--control")
    a = ap.parse_args()

    proxy = SlowProxy(port=a.port, target_port=a.target_port, delay=a.delay).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGUSR1, lambda *_: proxy.cut())
    if a.port_file:
        tmp = a.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(proxy.port))
        os.rename(tmp, a.port_file)
    seen = None
    while not done.wait(0.05):
        if not a.control:
            continue
        try:
            st = os.stat(a.control)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp != seen:
                seen = stamp
                with open(a.control) as f:
                    _apply(proxy, f.read())
        except FileNotFoundError:
            pass
    proxy.stop()


if __name__ == "__main__":
    main()
