"""A stand-in command for the warm-start tests (``python -m mofi_core.warm PATH
tests.warm_target:main``): each argument list asks for one behaviour of a stage process."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> None:
    what = argv[0]
    if what == "echo":  # what the stage process sees; exits with the code asked for
        print(f"cwd={os.getcwd()}")
        print(f"FOO={os.environ.get('FOO')}")
        print(f"socket={os.environ.get('MOFI_WARM_SOCKET')}")
        print(f"argv={sys.argv}")
        print(f"stdin={sys.stdin.read().strip()}")
        print("to stderr", file=sys.stderr)
        sys.exit(int(argv[1]))
    if what == "die":  # killed by a signal
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
    if what == "wait":  # records its pid, then waits (for a signal, or to be killed)
        def stop(signum, _frame):
            print(f"got signal {signum}", flush=True)
            sys.exit(7)

        signal.signal(signal.SIGTERM, stop)
        Path(argv[1]).write_text(str(os.getpid()), encoding="utf-8")
        time.sleep(60)
        sys.exit(0)
    if what == "raise":
        raise ValueError("a stage bug")
    raise SystemExit(f"unknown behaviour {what!r}")
