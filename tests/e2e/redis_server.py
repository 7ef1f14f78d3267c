"""A real redis-server for a test, on 127.0.0.1 and a free port, without
persistence; and redis-cli to look at it or plant values."""
import os
import signal
import subprocess
import time

from harness import free_port, wait_port


class Redis:
    def __init__(self, workdir, password=None):
        self.workdir = workdir
        self.password = password
        self.port = free_port()
        self.proc = None
        self.log = os.path.join(workdir, f"redis-{self.port}.log")

    def start(self):
        cmd = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
               "--appendonly", "no", "--dir", self.workdir, "--logfile", self.log]
        if self.password:
            cmd += ["--requirepass", self.password]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc)
        deadline = time.time() + 10
        while time.time() < deadline and self.cli("PING").strip() != "PONG":
            time.sleep(0.05)
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def pause(self):
        """SIGSTOP: the socket stays open and nothing answers (a hung Redis)."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def cli(self, *args, stdin=None):
        cmd = ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), "--no-raw"]
        env = dict(os.environ)
        if self.password:
            env["REDISCLI_AUTH"] = self.password
        if stdin is not None:
            cmd.append("-x")
        p = subprocess.run(cmd + list(args), input=stdin, capture_output=True, env=env,
                           timeout=10)
        return p.stdout.decode("latin-1")

    def raw(self, *args):
        """redis-cli --raw: the value's bytes as stored."""
        cmd = ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), "--raw"]
        env = dict(os.environ)
        if self.password:
            env["REDISCLI_AUTH"] = self.password
        p = subprocess.run(cmd + list(args), capture_output=True, env=env, timeout=10)
        return p.stdout

    def keys(self, pattern="certmapd:*"):
        return [k for k in self.raw("KEYS", pattern).decode("latin-1").split("\n") if k]

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"
