"""``pipeplan dashboard``: start the Streamlit app on 127.0.0.1."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from profiles.clikit import Command, bounded
from profiles.contract import UserError

__all__ = ["DASHBOARD", "APP", "streamlit_command"]

APP = Path(__file__).resolve().parent / "app.py"


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=8501, help="port on 127.0.0.1 (default 8501)")
    p.add_argument(
        "--root",
        action="append",
        default=[],
        metavar="DIR",
        help="folder to read profiles, plans, run reports and cluster files from (repeatable; default runs/ and "
        "profiles/); paths inside those files are followed only into these folders",
    )


def streamlit_command(port: int, roots: list[str]) -> list[str]:
    """The ``streamlit run`` command line: local address only, no usage statistics, and the minimal
    toolbar (no "Deploy" button: the app serves this machine's files to this machine)."""
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP)]
    cmd += ["--server.address", "127.0.0.1", "--server.port", str(port), "--server.headless", "true"]
    cmd += ["--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal", "--"]
    for r in roots:
        cmd += ["--root", r]
    return cmd


def _run(args: argparse.Namespace) -> int:
    bounded("--port", args.port, 1, 65535)
    for r in args.root:
        if not Path(r).is_dir():
            raise UserError(f"--root {r}: not a folder: give a folder of profiles, plans and run reports")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(APP.parent.parent), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    print(f"pipeplan dashboard on http://127.0.0.1:{args.port}", flush=True)
    proc = subprocess.Popen(streamlit_command(args.port, args.root), env=env)
    # Ctrl-C reaches Streamlit too (same process group): let it stop its background runs and exit, rather
    # than SIGKILL it as subprocess.run would; SIGTERM, or Streamlit still running after 10 s, ends it.
    old = signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    try:
        return proc.wait()
    except KeyboardInterrupt:
        try:
            proc.wait(timeout=10)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            proc.terminate()
            proc.wait()
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)


DASHBOARD = Command("dashboard", "Start the Streamlit dashboard on 127.0.0.1.", _add, _run)
