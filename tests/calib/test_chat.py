"""`python -m calib.chat`: one real answer from a zoo model, and clear errors."""
from __future__ import annotations

import subprocess
import sys


def _chat(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "calib.chat", *args], capture_output=True, text=True, timeout=600)


def test_answers_about_an_image_with_the_tiny_model(tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "red.png")
    p = _chat("--model", "tiny-random-llava", "--image", str(tmp_path / "red.png"), "--max-new-tokens", "5",
              "What colour is this?")
    assert p.returncode == 0, p.stderr
    assert "5 tokens" in p.stderr or "stopped by eos" in p.stderr


def test_bad_image_is_named(tmp_path):
    (tmp_path / "x.png").write_text("not a png")
    p = _chat("--model", "tiny-random-llava", "--image", str(tmp_path / "x.png"), "hi")
    assert p.returncode == 2 and "x.png is not a readable image" in p.stderr
    p = _chat("--model", "tiny-random-llava", "--image", "skimage:nothing", "hi")
    assert p.returncode == 2 and "no photo 'nothing'" in p.stderr
