"""Uploaded photos: checked, decoded safely and downscaled before the model sees them.

A public demo receives anything: a PDF renamed ``.jpg``, a 20 MB panorama, a decompression bomb (a
small PNG that decodes to gigapixels). :func:`read_photo` refuses what it cannot use with one
sentence a user understands (:class:`~afmrl.errors.UserError`, shown in the UI), and shrinks huge
photos to :data:`MAX_SIDE` pixels on the longer side -- the encoder works at a few hundred pixels at
most, so nothing is lost. The pixel count is read from the file header before decoding, and JPEGs
are decoded at reduced scale directly (``Image.draft``).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any

from afmrl.errors import UserError

#: Largest upload accepted, in bytes (the UI also enforces it at upload time).
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
#: Largest decoded size accepted, in pixels (width x height); bigger files are refused unread.
MAX_PIXELS = 50_000_000
#: Longer side of a photo after downscaling.
MAX_SIDE = 1024
#: Image formats accepted (what PIL reports after reading the header).
FORMATS: dict[str, str] = {
    "JPEG": "JPEG",
    "MPO": "JPEG",
    "PNG": "PNG",
    "WEBP": "WebP",
    "GIF": "GIF",
    "BMP": "BMP",
    "TIFF": "TIFF",
}
ACCEPTED = "JPEG, PNG or WebP"


def read_photo(
    source: Any,
    *,
    name: str = "the photo",
    max_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_PIXELS,
    max_side: int = MAX_SIDE,
) -> Any:
    """An uploaded photo (a file path or a PIL image) as an RGB PIL image, at most ``max_side``
    pixels on its longer side.

    Raises:
        UserError: a missing or empty file, a file over ``max_bytes``, something that is not an
            image in one of :data:`FORMATS`, a truncated image, or more than ``max_pixels``.
    """
    from PIL import Image, ImageOps

    from modeling_afmrl.processing_afmrl import to_rgb_image

    if isinstance(source, Image.Image):
        image = source
        _check_pixels(image, name, max_pixels)
    else:
        path = Path(os.fspath(source))
        if not path.is_file():
            raise UserError(f"{name}: the file was not received (upload it again)")
        size = path.stat().st_size
        if size == 0:
            raise UserError(f"{name} is an empty file")
        if size > max_bytes:
            raise UserError(
                f"{name} is {size / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB"
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise UserError(f"{name} is too large to decode safely") from None
        except (OSError, ValueError, SyntaxError):
            raise UserError(
                f"{name} is not an image this demo can read: upload a {ACCEPTED} photo"
            ) from None
        if image.format not in FORMATS:
            raise UserError(f"{name} is a {image.format} file: upload a {ACCEPTED} photo")
        _check_pixels(image, name, max_pixels)
        try:
            image.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale
            image.load()
        except (OSError, ValueError, SyntaxError):
            raise UserError(f"{name} is damaged or truncated: upload it again") from None
    with contextlib.suppress(OSError, ValueError, TypeError, SyntaxError):
        image = ImageOps.exif_transpose(image)  # a broken EXIF block: keep the photo as stored
    image = to_rgb_image(image, name)
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return image


def _check_pixels(image: Any, name: str, max_pixels: int) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        raise UserError(f"{name} is empty ({width}x{height} pixels)")
    if width * height > max_pixels:
        raise UserError(
            f"{name} is {width}x{height} pixels; the limit is {max_pixels / 1e6:.0f} megapixels"
        )


__all__ = ["ACCEPTED", "FORMATS", "MAX_PIXELS", "MAX_SIDE", "MAX_UPLOAD_BYTES", "read_photo"]
