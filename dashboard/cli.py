"""``pipeplan dashboard``: start the Streamlit app on 127.0.0.1."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from profiles.clikit import Command, bounded
from profiles.contract import UserError

__all__ = ["DASHBOARD", "APP"]

APP = Path(__file__).resolve().parent / "app.py"


def _add(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=8501, help="port on 127.0.0.1 (default 8501)")
    p.add_argument(
        "--root",
        action="append",
        default=[],
        metavar="DIR",
        help="folder to read profiles, plans and run reports from (repeatable; default runs/ and profiles/)",
    )


def _run(args: argparse.Namespace) -> int:
    bounded("--port", args.port, 1, 65535)
    for r in args.root:
        if not Path(r).is_dir():
            raise UserError(f"--root {r}: not a folder: give a folder of profiles, plans and run reports")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(APP.parent.parent), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.address",
        "127.0.0.1",
        "--server.port",
        str(args.port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--",
    ]
    for r in args.root:
        cmd += ["--root", r]
    print(f"pipeplan dashboard on http://127.0.0.1:{args.port}", flush=True)
    return subprocess.run(cmd, env=env).returncode


DASHBOARD = Command("dashboard", "Start the Streamlit dashboard on 127.0.0.1.", _add, _run)
