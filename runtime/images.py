"""Images for the models: opening a file or a bundled scikit-image photo (`skimage:NAME`), and refusing, with one
clear error, any image the models cannot or should not see (not an image, truncated, empty, a decompression
bomb, an extreme strip, an animation, or a mode such as CMYK or 16-bit that does not convert to 8-bit RGB
faithfully)."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from runtime.errors import UserError

# Pillow's own decompression-bomb threshold (it only warns up to twice this); refused here, not warned about.
MAX_PIXELS = 89_478_485
# Longer edge over shorter edge: the resize to the model's size would otherwise blow up a long strip.
MAX_ASPECT = 50
# Modes whose conversion to RGB keeps the picture (a palette gives its exact colours; alpha is dropped, as
# Hugging Face's image processors do).
MODES = ("RGB", "L", "1", "P", "RGBA", "LA", "PA", "RGBX", "YCbCr")
_WHY = {"CMYK": "CMYK, which needs its colour profile to become RGB",
        "I;16": "16-bit, which would be clipped to white", "I": "32-bit integer, which would be clipped to white",
        "F": "floating-point, which would be clipped"}
_FIX = "give a still 8-bit RGB or greyscale image (PNG or JPEG)"


def refuse(where: str, reason: object) -> UserError:
    """The one error every unusable image gets."""
    return UserError(f"{where} is not a readable image ({reason}); {_FIX}")


def _check_shape(image: Image.Image, where: str) -> None:
    w, h = image.size
    if w < 1 or h < 1:
        raise refuse(where, f"it has no pixels: {w}x{h}")
    if w * h > MAX_PIXELS:
        raise refuse(where, f"{w}x{h} pixels, over the {MAX_PIXELS:,} decoded here (a decompression bomb?); "
                            "scale it down first")
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise refuse(where, f"{w}x{h} pixels, more than {MAX_ASPECT} times longer than wide; crop it first")


def usable_image(image: Image.Image, where: str = "the image") -> Image.Image:
    """`image` as 8-bit RGB, or the error of `refuse` naming why the models should not see it."""
    if not isinstance(image, Image.Image):
        raise UserError(f"expected a PIL image, got {type(image).__name__}; open files with runtime.images.decode_image")
    _check_shape(image, where)
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        raise refuse(where, f"it has {frames} frames, an animation or a multi-page file; save the one frame you mean")
    mode = "I;16" if image.mode.startswith("I;16") else image.mode
    if mode not in MODES:
        raise refuse(where, f"its mode is {_WHY.get(mode, repr(image.mode))}; convert it to 8-bit RGB first")
    return image if image.mode == "RGB" else image.convert("RGB")


def decode_image(path: str | os.PathLike, where: str | None = None) -> Image.Image:
    """Open and fully decode an image file as 8-bit RGB (the file is closed after), with `usable_image`'s checks;
    the size is checked from the header before anything is decoded."""
    where = where or str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                _check_shape(im, where)
                im.load()
                return usable_image(im, where)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise refuse(where, e) from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        raise refuse(where, e) from e


def open_image(spec: str) -> Image.Image:
    """An RGB image from `PATH` or `skimage:NAME` (e.g. skimage:astronaut; needs scikit-image)."""
    if spec.startswith("skimage:"):
        name = spec.split(":", 1)[1]
        try:
            import skimage.data
        except ImportError as e:
            raise UserError("skimage: images need scikit-image (pip install scikit-image)") from e
        loader = getattr(skimage.data, name, None)
        if loader is None or not callable(loader):
            raise UserError(f"scikit-image has no photo {name!r}; try astronaut, chelsea, coffee, rocket")
        return usable_image(Image.fromarray(loader()), spec)
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"image {spec} does not exist; give an image file or skimage:NAME")
    return decode_image(path, spec)
