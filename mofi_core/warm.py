"""Warm start: stage commands forked from a process that has already imported the libraries.

Every stage is its own process (DVC runs ``mofi <stage>``), and each one used to spend most of
its fixed cost importing the same libraries: torch and open_clip (with torchvision pulling in
torch's compiler), MLflow and its SQLAlchemy store, pandas, great-expectations. On a 2-core
host that is 3.5 s for the smallest stage and about 10 s for a stage that loads a model, about
a sixth of the whole demo.

So the flow (:mod:`flows.mofi_flow`) starts one **warm server** per run: a process that
imports those libraries once and then waits on a Unix socket in a private folder (mode 0700).
DVC still runs the stage command as written in ``dvc.yaml``; when ``MOFI_WARM_SOCKET`` names a
ready server, ``mofi`` (the client) hands its arguments, working folder, environment and
standard streams (the file descriptors themselves) to the server instead of importing anything.
The server forks a *supervisor*, which forks the stage process; the stage runs the command
exactly as ``mofi`` would, with the client's folder, environment and streams, and its exit
status comes back to the client, which exits with it (or dies of the same signal). DVC, the
flow's log and ``dvc.lock`` see what they saw before.

What keeps this safe:

- the server only imports; it never runs a torch op, opens the tracking store or starts a
  Python thread before it forks (it checks the thread count and refuses to serve otherwise),
  so the stage starts from a clean state, as a fresh process would, and seeds its own RNGs as
  before. Native helper threads started by imports (OpenBLAS's pool, pyarrow's jemalloc) are
  not copied into the stage; those libraries handle ``fork`` themselves, as they must for
  ``multiprocessing``'s fork start method;
- the stage process does not inherit ``MOFI_WARM_SOCKET``: whatever it launches (torchrun,
  spawned worker pools) starts cold;
- ``SIGINT``, ``SIGTERM``, ``SIGHUP`` and ``SIGQUIT`` sent to the client are passed on to the
  stage; if the client is killed outright (``kill -9``, a killed process group), the supervisor
  sees its socket close and kills the stage with ``SIGKILL``, so a killed stage is as dead as
  before and leaves its partial outputs for the next run to resume;
- the server is stopped when the flow's run ends (it exits by itself if the flow dies: its
  stdin, a pipe from the flow, closes), and its socket folder is removed;
- only the same user can connect (the folder's mode, and the peer's uid is checked).

A client that finds no server (not ready yet: the first stage of a run usually starts while
the server is still importing; an unsupported platform; the server gone) says so in one line
and runs the command itself, cold. ``MOFI_WARM_START=off`` (or the flow's ``warm_start=False``)
turns the server off.

Outside the flow, ``mofi warm dvc repro`` (any command: ``dvc exp run``, a script) does the
same for one command: a server for its duration, and ``MOFI_WARM_SOCKET`` in its environment
(:func:`wrap`).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

SOCKET_ENV = "MOFI_WARM_SOCKET"
SWITCH_ENV = "MOFI_WARM_START"
# what the stage commands import between them (each stage imports its own module lazily)
PRELOAD = ("numpy", "pandas", "pyarrow.parquet", "PIL.Image", "torch", "open_clip",
           "mlflow", "mlflow.store.tracking.sqlalchemy_store", "great_expectations",
           "mofi_core.cli", "mofi_core.stage")
ENTRY = "mofi_core.cli:run_here"  # what a stage process runs: the `mofi` command
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_HEADER = struct.Struct("!I")
FAILED = ".failed"  # beside the socket: why the server stopped


def supported() -> bool:
    """Linux-style fork + pidfd + fd passing (not Windows or macOS)."""
    return hasattr(os, "fork") and hasattr(os, "pidfd_open") and hasattr(socket, "send_fds")


def enabled() -> bool:
    return os.environ.get(SWITCH_ENV, "on").lower() not in ("off", "0", "false", "no")


# -- messages: a 4-byte length, then JSON -------------------------------------------------------

def _send(sock: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode("utf-8")
    payload = _HEADER.pack(len(data)) + data
    if fds:
        socket.send_fds(sock, [payload], fds)
    else:
        sock.sendall(payload)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = b""
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            raise EOFError("the other end closed the warm-start socket")
        chunks += chunk
    return chunks


def _recv(sock: socket.socket, with_fds: int = 0) -> tuple[dict, list[int]]:
    fds: list[int] = []
    if with_fds:
        head, fds, _flags, _addr = socket.recv_fds(sock, _HEADER.size, with_fds)
        if not head:
            raise EOFError("the other end closed the warm-start socket")
        head += _recv_exact(sock, _HEADER.size - len(head))
    else:
        head = _recv_exact(sock, _HEADER.size)
    (size,) = _HEADER.unpack(head)
    return json.loads(_recv_exact(sock, size).decode("utf-8")), fds


# -- the client: what `mofi` does when a warm server is named ----------------------------------

def delegate(argv: list[str], path: str) -> int | None:
    """Run ``mofi argv`` in the warm server at ``path``; its exit code (a negative code: the
    stage died of that signal). None when no server answers: the caller runs the command
    itself (a one-line note says why)."""
    if not supported():
        return _cold(f"warm start needs fork and pidfd_open, which {sys.platform} lacks")
    if os.path.exists(path + FAILED):
        why = Path(path + FAILED).read_text(encoding="utf-8", errors="replace")
        return _cold(f"the warm server failed ({why})")
    if not os.path.exists(path):
        return _cold("the warm server is not ready yet")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        _send(sock, {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}, [0, 1, 2])
        started, _ = _recv(sock)
    except (OSError, EOFError) as err:
        sock.close()
        return _cold(f"the warm server at {path} did not answer ({err})")
    if "error" in started:
        sock.close()
        return _cold(f"the warm server refused: {started['error']}")
    def forward(signum: int, _frame) -> None:
        try:
            _send(sock, {"signal": signum})
        except BrokenPipeError:  # the supervisor already left: the stage's status is in the
            return               # socket, and the wait below reads it

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        done, _ = _recv(sock)  # a forwarded signal's handler runs, then the wait goes on
    except EOFError:
        done = {"code": 1, "why": "the warm-start supervisor ended without a status"}
        print(f"mofi: {done['why']} (stage pid {started['pid']})", file=sys.stderr)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    return int(done["code"])


def _cold(why: str) -> None:
    print(f"mofi: {why}; starting cold", file=sys.stderr, flush=True)
    return None


def exit_like(code: int) -> None:
    """Leave this process as the stage left: exit code, or death by the same signal."""
    if code < 0:
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        time.sleep(1)  # the signal is delivered before this returns
    sys.exit(code)


# -- the server --------------------------------------------------------------------------------

def serve(path: str, control: int = 0) -> tuple[dict, list[int]] | None:
    """Accept clients on ``path`` until ``control`` (a pipe from the flow) reaches EOF. Returns
    None in the server when it stops; returns a client's request and streams in the stage
    process forked for it (the caller runs the command there)."""
    if threading.active_count() > 1:
        raise RuntimeError(f"the warm server has {threading.active_count()} threads after its "
                           "imports; forking it could deadlock a stage, so it does not serve")
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # supervisors are reaped by the kernel
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".tmp")
    listener.listen(16)
    os.replace(path + ".tmp", path)  # clients see the socket only once it accepts
    while True:
        readable, _, _ = select.select([listener, control], [], [])
        if control in readable and not os.read(control, 4096):
            break
        if listener in readable:
            conn, _ = listener.accept()
            if os.fork() == 0:
                listener.close()
                return _supervise(conn)  # returns in the stage process only
            conn.close()
    listener.close()
    return None


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _supervise(conn: socket.socket) -> tuple[dict, list[int]]:
    """In the supervisor: read the request, fork the stage process (where this returns the
    request), pass signals on to it, report its status; kill it if the client goes away."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        if _peer_uid(conn) != os.getuid():
            _send(conn, {"error": "the client runs as another user"})
            os._exit(0)
        request, fds = _recv(conn, with_fds=3)
        pid = os.fork()
        if pid == 0:
            conn.close()
            return request, fds
        for fd in fds:
            os.close(fd)
        _send(conn, {"pid": pid})
        pidfd = os.pidfd_open(pid)
        while True:
            readable, _, _ = select.select([conn, pidfd], [], [])
            if pidfd in readable:
                _, status = os.waitpid(pid, 0)
                _send(conn, {"code": os.waitstatus_to_exitcode(status)})
                os._exit(0)
            try:
                message, _ = _recv(conn)
            except EOFError:  # the client is gone (killed): so is its stage
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                os._exit(0)
            os.kill(pid, int(message["signal"]))
    except BaseException as err:  # the supervisor must never return into the server's loop
        print(f"mofi warm start: supervisor {os.getpid()} failed: {type(err).__name__}: {err}",
              file=sys.stderr, flush=True)
        os._exit(1)


def run_request(request: dict, fds: list[int], entry: Callable[[list[str]], object]) -> int:
    """In the stage process: take the client's streams, environment, folder and arguments,
    run ``entry`` and return its exit code (the caller exits with it, normally, so
    ``atexit`` handlers such as MLflow's run end still run)."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=stream.isatty())
    os.environ.clear()
    os.environ.update({k: v for k, v in request["env"].items() if k != SOCKET_ENV})
    os.chdir(request["cwd"])
    sys.argv = ["mofi", *request["argv"]]
    try:
        entry(request["argv"])
    except SystemExit as done:
        if done.code is None or isinstance(done.code, int):
            return done.code or 0
        print(done.code, file=sys.stderr)
        return 1
    return 0


def _import(names: tuple[str, ...]) -> list[str]:
    """Import what the stages import; returns those missing here (an optional extra)."""
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def main(argv: list[str] | None = None) -> None:
    """``python -m mofi_core.warm SOCKET [ENTRY [MODULES]]``: the server the flow starts.
    ENTRY is ``module:function`` taking the argument list (default: the ``mofi`` command);
    MODULES, comma-separated, what it imports first (default: :data:`PRELOAD`)."""
    args = sys.argv[1:] if argv is None else argv
    path = args[0]
    entry_ref = args[1] if len(args) > 1 else ENTRY
    preload = tuple(m for m in args[2].split(",") if m) if len(args) > 2 else PRELOAD
    start = time.perf_counter()
    try:
        missing = _import(preload)
        module, _, name = entry_ref.partition(":")
        entry = getattr(importlib.import_module(module), name)
        import gc

        gc.collect()
        gc.freeze()  # the imports stay out of every stage's collections
        note = f" (not installed: {', '.join(missing)})" if missing else ""
        print(f"mofi warm start: ready in {time.perf_counter() - start:.1f} s{note}",
              file=sys.stderr, flush=True)
        job = serve(path, control=0)
    except Exception as err:  # clients read why and start cold
        Path(path + FAILED).write_text(f"{type(err).__name__}: {err}", encoding="utf-8")
        raise
    if job is not None:  # this is a stage process
        sys.exit(run_request(*job, entry))


@contextlib.contextmanager
def server(on: bool | None = None, entry: str = ENTRY,
           preload: tuple[str, ...] = PRELOAD) -> Iterator[str | None]:
    """Start a warm server for the duration of the block; yields its socket path (the value
    for ``MOFI_WARM_SOCKET``), or None when warm start is off (``on=False``, or ``on=None`` and
    ``MOFI_WARM_START=off``) or unsupported here. The path exists only once the server
    accepts; until then clients start cold."""
    if not ((enabled() if on is None else on) and supported()):
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="mofi-warm-"))  # mode 0700: this user only
    path = str(folder / "sock")
    # -P: import mofi_core as the `mofi` command does, never from the working folder
    proc = subprocess.Popen([sys.executable, "-P", "-m", "mofi_core.warm", path, entry,
                             ",".join(preload)],
                            stdin=subprocess.PIPE,
                            env={k: v for k, v in os.environ.items() if k != SOCKET_ENV})
    try:
        yield path
    finally:
        # it holds nothing to save (running stages are processes of their own), and it may still
        # be importing: stop it now rather than wait for it to read the closed pipe
        assert proc.stdin is not None
        proc.stdin.close()
        proc.terminate()
        proc.wait()
        shutil.rmtree(folder)


# signals a terminal sends to the whole foreground process group (the command gets them itself)
_GROUP_SIGNALS = (signal.SIGINT, signal.SIGQUIT)


def wrap(command: list[str], on: bool | None = None, **server_options) -> int:
    """Run ``command`` (``dvc repro``, ``dvc exp run``...) with a warm server for its
    duration: the ``mofi`` stage commands it starts run in the server. Returns its exit code
    (negative: it died of that signal). ``SIGTERM`` and ``SIGHUP`` sent to this process are
    passed on; ``SIGINT``/``SIGQUIT`` from a terminal reach the command directly (same process
    group), so here they are ignored rather than sent twice. ``server_options``: those of
    :func:`server` (the tests' stand-in entry)."""
    if not command:
        raise ValueError("mofi warm needs a command to run, e.g. `mofi warm dvc repro`")
    if shutil.which(command[0]) is None:
        raise FileNotFoundError(f"mofi warm: {command[0]!r} is not a command on PATH "
                                "(or not executable)")
    with server(on, **server_options) as path:
        env = dict(os.environ)
        if path:
            env[SOCKET_ENV] = path
        proc = subprocess.Popen(command, env=env)

        def forward(signum: int, _frame) -> None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGHUP)}
        previous.update({sig: signal.signal(sig, signal.SIG_IGN) for sig in _GROUP_SIGNALS})
        try:
            return proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


if __name__ == "__main__":
    main()
