"""Uploads: what is not a usable photo is refused in one sentence; huge photos are downscaled."""

from __future__ import annotations

import pytest
from PIL import Image

from afmrl.demo.images import MAX_SIDE, read_photo
from afmrl.errors import UserError


def _refused(path, **kwargs) -> str:
    with pytest.raises(UserError) as err:
        read_photo(path, **kwargs)
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_text_file_is_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"  # the name does not matter, the content does
    path.write_text("these are my notes, not a photo")
    assert "not an image" in _refused(path) and "JPEG, PNG or WebP" in _refused(path)


def test_empty_missing_and_oversized_files(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert "empty" in _refused(empty)
    assert "not received" in _refused(tmp_path / "gone.png")
    big = tmp_path / "big.png"
    Image.new("RGB", (64, 64), "red").save(big)
    assert "limit is" in _refused(big, max_bytes=100)


def test_other_image_formats_and_truncated_files(tmp_path):
    ppm = tmp_path / "photo.ppm"
    Image.new("RGB", (8, 8), "red").save(ppm)
    assert "PPM" in _refused(ppm)
    jpeg = tmp_path / "cut.jpg"
    Image.effect_noise((256, 256), 64).convert("RGB").save(jpeg, quality=95)
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    assert "damaged or truncated" in _refused(jpeg)


def test_too_many_pixels_is_refused_before_decoding(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (300, 200), "white").save(path)
    assert "300x200 pixels" in _refused(path, max_pixels=10_000)


def test_huge_photo_is_downscaled_and_modes_become_rgb(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("RGBA", (3000, 1500), (10, 20, 30, 128)).save(path)
    photo = read_photo(path)
    assert photo.mode == "RGB" and photo.size == (MAX_SIDE, MAX_SIDE // 2)
    small = read_photo(Image.new("L", (40, 30)))
    assert small.mode == "RGB" and small.size == (40, 30)
