"""Images the decoder cannot or should not handle all get the error a text file named .png gets: from a file
(the chat CLIs, dataset items) and as an in-memory image (the shared preprocessing of both model paths)."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime import cli
from runtime.errors import UserError
from runtime.images import open_image
from runtime.preprocess import ImageSpec, preprocess

SPEC = ImageSpec(size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
REFUSED = r"is not a readable image \(.*\); give a still 8-bit RGB or greyscale image"


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height pixels and whose data is one empty row (a bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00"))
                     + chunk(b"IEND", b""))
    return path


def _photo(size=(24, 16)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_text_file_named_png_is_the_reference_error(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(UserError, match=REFUSED):
        open_image(str(tmp_path / "notes.png"))


def test_truncated_png_is_refused(tmp_path: Path) -> None:
    _photo((64, 64)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:len(data) // 2])
    with pytest.raises(UserError, match=REFUSED):
        open_image(str(tmp_path / "cut.png"))


@pytest.mark.parametrize("width, height", [(20000, 20000), (10000, 10000)])
def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path, width: int, height: int) -> None:
    path = _png_header(tmp_path / "bomb.png", width, height)
    with pytest.raises(UserError, match=r"(decompression bomb|exceeds limit).*give a still"):
        open_image(str(path))
    assert width * height > 89_478_485  # Pillow's own bomb threshold, refused rather than warned about


def test_extreme_strip_is_refused(tmp_path: Path) -> None:
    Image.new("RGB", (6000, 2), (200, 10, 10)).save(tmp_path / "strip.png")
    with pytest.raises(UserError, match=r"6000x2 pixels, more than 50 times longer than wide"):
        open_image(str(tmp_path / "strip.png"))


def test_animated_gif_is_refused(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    with pytest.raises(UserError, match=r"it has 3 frames"):
        open_image(str(tmp_path / "anim.gif"))


def test_multi_page_tiff_is_refused(tmp_path: Path) -> None:
    pages = [_photo(), _photo()]
    pages[0].save(tmp_path / "pages.tiff", save_all=True, append_images=pages[1:])
    with pytest.raises(UserError, match=r"it has 2 frames"):
        open_image(str(tmp_path / "pages.tiff"))


@pytest.mark.parametrize("mode, name, why", [("CMYK", "c.jpg", "CMYK"), ("I;16", "g16.png", "16-bit"),
                                             ("F", "f.tiff", "floating-point")])
def test_modes_that_convert_badly_are_refused(tmp_path: Path, mode: str, name: str, why: str) -> None:
    Image.new(mode, (8, 8)).save(tmp_path / name)
    with pytest.raises(UserError, match=rf"its mode is {why}"):
        open_image(str(tmp_path / name))


def test_in_memory_images_get_the_same_checks(tmp_path: Path) -> None:
    for image, why in ((Image.new("RGB", (0, 0)), "no pixels"), (Image.new("CMYK", (8, 8)), "CMYK"),
                       (Image.new("I;16", (8, 8)), "16-bit")):
        with pytest.raises(UserError, match=why):
            preprocess([image], SPEC)


def test_usable_images_still_convert() -> None:
    photo = _photo()
    palette = photo.convert("P", palette=Image.ADAPTIVE)
    for image in (photo, photo.convert("L"), palette, photo.convert("RGBA"), photo.convert("1")):
        got = preprocess([image], SPEC)
        np.testing.assert_array_equal(got, preprocess([image.convert("RGB")], SPEC))


def test_dataset_item_images_get_the_same_error(tmp_path: Path) -> None:
    from runtime.mmtoxicqa.items import Item

    Image.new("CMYK", (8, 8)).save(tmp_path / "c.jpg")
    it = Item(id="s0", split="evaluation", condition="standard", category="insult", prompt="p", image="c.jpg",
              source="x", root=tmp_path)
    with pytest.raises(UserError, match=rf"item s0: .*c.jpg {REFUSED}"):
        it.load_image()


def test_chat_refuses_an_animated_image_first(tmp_path: Path, capsys) -> None:
    from runtime.chat import main

    frames = [Image.new("L", (8, 8), i) for i in (0, 255)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    assert cli.run(main, ["What is it?", "--bundle", str(tmp_path / "nothing"), "--image", str(tmp_path / "anim.png")]) == 2
    assert "it has 2 frames" in capsys.readouterr().err
