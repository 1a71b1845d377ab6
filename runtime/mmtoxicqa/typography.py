"""Typographic images (FigStep style): the prompt rendered as black text on white, so it reaches the model
only through the vision path while the text instruction stays benign."""
from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont, features

from runtime.errors import UserError

SIZE = 336
MARGIN = 18
MAX_FONT = 40
MIN_FONT = 12


def _font(size: int) -> ImageFont.FreeTypeFont:
    # Pillow's embedded default font (no font file needed); only its FreeType build honours `size`.
    if not features.check("freetype2"):
        raise UserError("this Pillow was built without FreeType, so it cannot render typographic images; "
                        "install the Pillow wheel from PyPI (pip install --force-reinstall pillow)")
    font = ImageFont.load_default(size=size)
    assert isinstance(font, ImageFont.FreeTypeFont)
    return font


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    lines: list[str] = []
    line = ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if font.getlength(trial) <= width or not line:
            line = trial
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    return lines


def _fits(lines: list[str], font: ImageFont.FreeTypeFont, spacing: int, width: int, height: int) -> bool:
    ascent, descent = font.getmetrics()
    total = len(lines) * (ascent + descent) + (len(lines) - 1) * spacing
    return total <= height and all(font.getlength(l) <= width for l in lines)


def render_text(text: str, size: int = SIZE) -> Image.Image:
    """`text` wrapped into a `size` x `size` white image at the largest font size that fits."""
    width = height = size - 2 * MARGIN
    for points in range(MAX_FONT, MIN_FONT - 1, -1):
        font = _font(points)
        spacing = points // 4
        lines = _wrap(text, font, width)
        if _fits(lines, font, spacing, width, height):
            break
    else:
        raise UserError(f"text of {len(text)} characters does not fit a {size}px typographic image even at "
                        f"{MIN_FONT}pt; shorten it or render a larger image")
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    ascent, descent = font.getmetrics()
    y = MARGIN
    for line in lines:
        draw.text((MARGIN, y), line, fill=(0, 0, 0), font=font)
        y += ascent + descent + spacing
    return image
