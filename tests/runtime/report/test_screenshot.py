"""report.html rendered by a real headless Chromium (Debian's `chromium`); skipped when it is not installed."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from runtime.report.screenshot import find_chromium, screenshot

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="Chromium not installed (apt-get install -y chromium); "
                                       "the report's browser render is not checked")


def test_report_renders_in_headless_chromium(full_page, tmp_path):
    png = screenshot(full_page, tmp_path / "report.png", width=1280, height=1600)
    with Image.open(png) as im:
        assert im.size == (1280, 1600)
        pixels = np.asarray(im.convert("L"), dtype=np.float64)
    # a rendered page, not a blank or error page: dark text on the light top, and the embedded figures
    assert pixels[:120].min() < 60 and pixels.std() > 20
    colourful = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    spread = colourful.max(axis=2) - colourful.min(axis=2)
    assert (spread > 80).mean() > 0.003  # the coloured run swatches and bars
