"""Opening images given on a command line: a file path or a bundled scikit-image photo (`skimage:NAME`)."""
from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from runtime.errors import UserError


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
        return Image.fromarray(loader()).convert("RGB")
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"image {spec} does not exist; give an image file or skimage:NAME")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{spec} is not a readable image ({e})") from e
