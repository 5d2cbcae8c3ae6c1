"""Screenshot of the "Sparsity" dashboard in a real TensorBoard page, rendered by headless Chromium.

    lightning-prox fit --config recipes/quickstart.yaml
    python docs/scripts/tensorboard_screenshot.py lightning_logs docs/img/tensorboard_dashboard.png

Needs TensorBoard (a dependency) and a Chromium binary (Debian: ``apt-get install chromium``; or set
``--chromium``). It starts ``tensorboard --logdir LOGDIR`` on a free local port, waits until it serves,
opens the Custom Scalars tab headless and writes the PNG.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("logdir")
    p.add_argument("out")
    p.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    p.add_argument("--size", default="1400,1100")
    args = p.parse_args()
    if not args.chromium:
        print("no Chromium found: apt-get install chromium, or pass --chromium PATH", file=sys.stderr)
        return 2
    port = _free_port()
    tb = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            args.logdir,
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run(
                [
                    args.chromium,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    f"--user-data-dir={profile}",
                    f"--window-size={args.size}",
                    "--virtual-time-budget=15000",
                    f"--screenshot={args.out}",
                    f"http://127.0.0.1:{port}/#custom_scalars",
                ],
                check=True,
                timeout=120,
                capture_output=True,
            )
    finally:
        tb.terminate()
        tb.wait(timeout=30)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
