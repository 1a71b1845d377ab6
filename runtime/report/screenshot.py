"""Render a report page to PNG in headless Chromium, to check it displays in a real browser.

    python -m runtime.report.screenshot report.html report.png [--width 1280] [--height 2000]

Chromium runs offline-quiet (no network services, no first-run, no sync) with a fresh profile directory.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

from runtime import cli
from runtime.artifacts import check_output
from runtime.errors import UserError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars")


def find_chromium() -> str | None:
    """Path of a Chromium or Chrome executable on PATH ($CHROMIUM first), or None."""
    env = os.environ.get("CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


def screenshot(html_path: str | os.PathLike, png_path: str | os.PathLike, width: int = 1280, height: int = 2000,
               timeout: float = 180.0) -> Path:
    """Render `html_path` at width x height CSS pixels into `png_path`; return it."""
    browser = find_chromium()
    if browser is None:
        raise UserError("no Chromium found (looked for $CHROMIUM, " + ", ".join(CANDIDATES)
                        + "); install it, e.g. apt-get install -y chromium")
    page = Path(html_path).resolve()
    if not page.is_file():
        raise UserError(f"{page} does not exist; write the report first (python -m runtime.report ...)")
    png = Path(png_path).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [browser, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}",
               f"--window-size={width},{height}", page.as_uri()]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise UserError(f"Chromium did not finish within {timeout:g} s rendering {page}") from e
    if proc.returncode != 0 or not png.is_file() or png.stat().st_size == 0:
        tail = "\n".join((proc.stderr or "").strip().splitlines()[-5:])
        raise UserError(f"Chromium failed to render {page} (exit {proc.returncode}): {tail}")
    return png


def main(argv: Sequence[str] | None = None) -> int:
    """Render and print where the PNG went."""
    p = argparse.ArgumentParser(prog="python -m runtime.report.screenshot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("html", type=Path)
    p.add_argument("png", type=Path)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=2000)
    args = p.parse_args(argv)
    check_output(args.png, [args.html], directory=False, flag="png")
    print(f"wrote {screenshot(args.html, args.png, args.width, args.height)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
