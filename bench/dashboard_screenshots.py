"""Screenshots of every dashboard view from the real server, with headless Chromium.

    python bench/dashboard_screenshots.py [--root DIR] [--out DIR] [--port P]

Starts ``pipeplan dashboard --port P --root DIR`` on 127.0.0.1, waits for it to be
healthy, drives headless Chromium over its DevTools protocol to each view (chosen by
URL: ``?view=Plan`` ...), waits until Streamlit has stopped running and every chart has
drawn, saves one PNG per view, prints the folder, and stops the server and the browser.
Without ``--root`` it writes a synthetic profile and a saved plan to a temporary folder
(the Compare view then explains how to get a run report). Installs Debian's ``chromium``
with apt-get when it is missing and we are root.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: (file name, query string, window height or 0 for --size's): every view, a 64-rank what-if, a 64-device plan
#: (``synthetic64`` stands for the path of the 64-unit profile this script writes)
SHOTS = [
    ("1-profile", "view=Profile", 0),
    ("2-plan", "view=Plan", 0),
    ("3-pipeline", "view=Pipeline", 0),
    ("4-pipeline-64-ranks-whatif", "view=Pipeline&pipe_source=what-if", 2200),
    ("5-pipeline-64-device-plan", "view=Pipeline&profile=synthetic64&devices=64&batch=128&pp=64", 2200),
    ("6-compare", "view=Compare", 0),
    ("7-export", "view=Export", 1000),
]
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium"],
            check=True,
            env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
        )
        return shutil.which("chromium") or sys.exit("chromium did not install")
    sys.exit("no chromium: install Debian's chromium package (apt-get install -y chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _synthetic_root(folder: Path) -> Path:
    """A synthetic profile and one saved plan of it under ``folder/runs/synthetic``."""
    from dashboard.synthetic import synthetic_profile
    from planner import Cluster, Job, plan

    run = folder / "runs" / "synthetic"
    run.mkdir(parents=True, exist_ok=True)
    prof = synthetic_profile(12)
    prof.save(run / "profile.json")
    best = plan(
        prof,
        Cluster(devices=4, memory_bytes=2**30),
        Job(global_batch=16, schedules=("1F1B",)),
        top=1,
        profile_path=run / "profile.json",
    )[0]
    best.save(run / "plan.json")
    return folder / "runs"


def _profile_64(folder: Path) -> Path:
    """A 64-unit synthetic profile (for the 64-device plan), in a root of its own."""
    from dashboard.synthetic import synthetic_profile

    path = folder / "wide" / "synthetic64" / "profile.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    synthetic_profile(62, microbatch_sizes=(1,), name="synthetic64").save(path)
    return path


def _wait_healthy(port: int, server: subprocess.Popen, timeout: float = 60) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if server.poll() is not None:
            sys.exit(f"the dashboard exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"the dashboard did not answer on port {port} within {timeout:.0f} s")


class _Page:
    """One Chromium tab driven over the DevTools protocol (the ``websockets`` client that streamlit's server brings)."""

    def __init__(self, ws):
        self.ws, self.n = ws, 0

    @staticmethod
    async def open(debug_port: int) -> _Page:
        import websockets

        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{debug_port}/json/list", timeout=2) as r:
                    pages = [t for t in json.load(r) if t.get("type") == "page"]
                if pages:
                    break
            except OSError:
                pass
            await asyncio.sleep(0.2)
        else:
            sys.exit("chromium's DevTools endpoint did not come up")
        ws = await websockets.connect(pages[0]["webSocketDebuggerUrl"], max_size=256 * 2**20)
        return _Page(ws)

    async def call(self, method: str, **params):
        self.n += 1
        me = self.n
        await self.ws.send(json.dumps({"id": me, "method": method, "params": params}))
        while True:
            msg = json.loads(await self.ws.recv())
            if msg.get("id") == me:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def eval(self, expr: str):
        return (await self.call("Runtime.evaluate", expression=expr, returnByValue=True))["result"].get("value")


#: the app is done when Streamlit shows no "running" widget nor spinner (the minimal toolbar the dashboard
#: runs with may hide the former), and charts have drawn their canvas or svg
_STATE_JS = """(() => {
  const running = !!document.querySelector('[data-testid="stStatusWidget"], [data-testid="stSpinner"]');
  const skeleton = document.querySelectorAll('[data-testid="stSkeleton"]').length;
  const charts = document.querySelectorAll('[data-testid="stVegaLiteChart"]').length;
  const drawn = document.querySelectorAll('[data-testid="stVegaLiteChart"] canvas, '
                                          + '[data-testid="stVegaLiteChart"] svg.marks').length;
  const blocks = document.querySelectorAll('[data-testid="stMainBlockContainer"] '
                                           + '[data-testid="stElementContainer"]').length;
  return JSON.stringify({running, skeleton, charts, drawn, blocks});
})()"""


async def _shoot(page: _Page, url: str, png: Path, width: int, height: int, timeout: float = 90) -> dict:
    await page.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
    await page.call("Page.navigate", url=url)
    t0, calm_since, state = time.time(), None, {}
    while time.time() - t0 < timeout:
        await asyncio.sleep(0.5)
        state = json.loads(await page.eval(_STATE_JS) or "{}")
        ready = (
            state
            and not state["running"]
            and not state["skeleton"]
            and state["blocks"] > 0
            and state["drawn"] >= state["charts"]
        )
        calm_since = (calm_since or time.time()) if ready else None
        if calm_since and time.time() - calm_since > 2.0:
            break
    await asyncio.sleep(1.0)  # let the last chart transitions settle
    shot = await page.call("Page.captureScreenshot", format="png")
    png.write_bytes(base64.b64decode(shot["data"]))
    return state


async def _shoot_all(chrome: str, port: int, out: Path, width: int, height: int, names: dict[str, str]) -> list[Path]:
    debug_port = _free_port()
    with tempfile.TemporaryDirectory(prefix="pipeplan-chrome-") as profile_dir:
        browser = subprocess.Popen(
            [
                chrome,
                *CHROME_FLAGS,
                f"--user-data-dir={profile_dir}",
                f"--window-size={width},{height}",
                f"--remote-debugging-port={debug_port}",
                "--remote-debugging-address=127.0.0.1",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            page = await _Page.open(debug_port)
            written = []
            for name, query, h in SHOTS:
                png = out / f"{name}.png"
                t0 = time.time()
                for short, value in names.items():
                    query = query.replace(f"={short}", f"={value}")
                state = await _shoot(page, f"http://127.0.0.1:{port}/?{query}", png, width, h or height)
                print(
                    f"{png}  ({time.time() - t0:.1f} s, {state.get('drawn', 0)}/{state.get('charts', 0)} charts drawn)",
                    flush=True,
                )
                written.append(png)
            await page.ws.close()
            return written
        finally:
            os.killpg(browser.pid, signal.SIGTERM)
            browser.wait(timeout=15)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, help="folder with profiles, plans, run reports (default: synthetic data)")
    ap.add_argument("--out", type=Path, help="where the PNGs go (default: a new temporary folder)")
    ap.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    ap.add_argument("--size", default="1400,1800", help="window size WIDTH,HEIGHT (default 1400,1800)")
    args = ap.parse_args()
    chrome = _chromium()
    work = Path(tempfile.mkdtemp(prefix="pipeplan-shots-"))
    root = args.root or _synthetic_root(work)
    out = args.out or work / "png"
    out.mkdir(parents=True, exist_ok=True)
    wide = _profile_64(work)
    port = args.port or _free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    server = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "pipeplan.py"),
            "dashboard",
            "--port",
            str(port),
            "--root",
            str(root),
            "--root",
            str(wide.parent.parent),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_healthy(port, server)
        width, height = (int(x) for x in args.size.split(","))
        names = {"synthetic64": urllib.parse.quote(str(wide))}
        asyncio.run(_shoot_all(chrome, port, out, width, height, names))
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the streamlit child it started, nothing else
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
    print(f"screenshots in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
