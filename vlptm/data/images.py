"""One robust image loader for every stage (region extraction, feature extraction, demos).

:func:`load_image` turns a path, raw bytes or a binary file object into a fully decoded 8-bit RGB
:class:`PIL.Image.Image`, or raises :class:`ImageLoadError` whose ``reason`` says what was wrong, so a
long run can log the file and skip it:

>>> try:
...     image = load_image("photo.jpg")
... except ImageLoadError as err:
...     log.warning("skipping %s (%s)", err.path, err.reason)

What it does, in order:

1. Checks the source exists, is a file and is not empty (``missing``, ``is_directory``, ``empty``,
   ``unreadable`` for permission and other OS errors).
2. Opens the header only and rejects images with more than ``max_pixels`` pixels *before* decoding a
   single pixel (``too_large``). PIL's own global ``Image.MAX_IMAGE_PIXELS`` is never changed; its
   ``DecompressionBombWarning`` is silenced because this check replaces it, and its
   ``DecompressionBombError`` (raised above ``2 * Image.MAX_IMAGE_PIXELS``, the same value as
   :data:`DEFAULT_MAX_PIXELS`) also maps to ``too_large``. Allowing images above that level needs a caller
   to raise ``PIL.Image.MAX_IMAGE_PIXELS`` as well.
3. Decodes the first frame (animated GIF/WebP/APNG give frame 0). Unknown formats are
   ``not_an_image``; a file that ends early is ``truncated``; other decoder failures are ``corrupt``.
   A truncated file is an error, never a half-grey image (unless some other code has set PIL's global
   ``ImageFile.LOAD_TRUNCATED_IMAGES``, which this module leaves alone).
4. Applies the EXIF orientation tag (``ImageOps.exif_transpose``), unless ``apply_exif_orientation=False``
   (for annotations made on the stored pixels); a broken EXIF block is logged and ignored rather than
   losing the image.
5. Converts any mode to RGB:

   - ``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``RGB`` through PIL's conversions;
   - anything with transparency (``RGBA``, ``LA``, ``PA``, ``P``/``L``/``RGB`` with a ``transparency``
     entry, premultiplied ``RGBa``/``La``) is alpha-composited onto **white**, so transparent logos and
     icons look like they do on a web page rather than on black;
   - 16-bit greyscale (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``) is scaled by ``255 / 65535`` (rounded),
     never clipped;
   - 32-bit integer ``I`` whose values lie in ``[0, 65535]`` is treated as 16-bit data (older Pillow and
     many TIFF writers store 16-bit images that way); outside that range it is min-max stretched to
     ``[0, 255]``;
   - 32-bit float ``F`` with finite values in ``[0, 1]`` is multiplied by 255; otherwise min-max
     stretched; NaN and infinities become 0.

   A mode none of these cover is ``unsupported_mode``.
"""
from __future__ import annotations

import io
import logging
import os
import warnings
from typing import IO, TYPE_CHECKING, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:  # torch is imported lazily inside load_image_tensor
    import torch

logger = logging.getLogger(__name__)

ImageSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes]]

# 178,956,970 pixels (about 13,377 x 13,377): PIL's own decompression-bomb *error* level, i.e. twice its
# warning level ``Image.MAX_IMAGE_PIXELS`` (89,478,485). An RGB image this size takes about 540 MB decoded.
DEFAULT_MAX_PIXELS = 178_956_970

# Every value ImageLoadError.reason can take.
REASONS = (
    "missing",  # no file at the path
    "is_directory",  # the path is a directory
    "empty",  # zero bytes
    "unreadable",  # the OS refused to read it (permissions, I/O error)
    "not_an_image",  # no installed PIL plugin recognises the bytes
    "too_large",  # width * height over the pixel limit (checked from the header, before decoding)
    "truncated",  # the data ends before the image does
    "corrupt",  # the decoder failed for another reason (bad header fields, broken compressed stream)
    "unsupported_mode",  # decoded, but in a pixel mode that cannot be converted to RGB
)

_WHITE = (255, 255, 255)
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_DIRECT_TO_RGB_MODES = ("1", "L", "P", "RGB", "CMYK", "YCbCr", "RGBX")


class ImageLoadError(Exception):
    """An image that cannot be loaded; callers log it and skip the image.

    Attributes:
        path: The path that was given (``"<bytes>"`` or ``"<file object>"`` for in-memory sources).
        reason: A short machine-readable kind, one of :data:`REASONS`.
        detail: The underlying error's text, for the log.
    """

    def __init__(self, path: str, reason: str, detail: str = "") -> None:
        self.path = path
        self.reason = reason
        self.detail = detail
        message = f"cannot load image {path!r}: {reason.replace('_', ' ')}"
        super().__init__(f"{message} ({detail})" if detail else message)

    def __reduce__(self):  # keep the attributes when the error crosses a process boundary
        return (type(self), (self.path, self.reason, self.detail))


def load_image(
    source: ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS, apply_exif_orientation: bool = True
) -> Image.Image:
    """Loads an image fully decoded, EXIF-oriented and converted to 8-bit RGB.

    Args:
        source: A path (``str`` or ``os.PathLike``), the encoded file as ``bytes``/``bytearray``/
            ``memoryview`` (e.g. an HTTP upload), or a binary file object opened for reading.
        max_pixels: Largest ``width * height`` accepted, checked from the header before decoding;
            ``None`` disables this check (PIL's own global limit still applies).
        apply_exif_orientation: Rotate/flip by the EXIF orientation tag (the default, what viewers and
            annotation tools show). Pass ``False`` for annotations made in the stored pixel layout.

    Returns:
        An ``RGB`` image, already decoded (no open file behind it), with the EXIF orientation applied
        unless disabled, so ``image.size`` is the displayed ``(width, height)``.

    Raises:
        ImageLoadError: With ``reason`` in :data:`REASONS`.

    Example:
        >>> image = load_image(Path("datasets/coco/train2017/000000000009.jpg"))
        >>> image.mode, image.size
        ('RGB', (640, 480))
    """
    label, stream = _open_source(source)
    try:
        return _decode(label, stream, max_pixels, apply_exif_orientation)
    finally:
        if isinstance(source, (str, os.PathLike)):
            stream.close()


def load_image_tensor(
    source: ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS, apply_exif_orientation: bool = True
) -> "torch.Tensor":
    """Loads an image like :func:`load_image` and returns its pixels as a tensor.

    Args:
        source: As for :func:`load_image`.
        max_pixels: As for :func:`load_image`.
        apply_exif_orientation: As for :func:`load_image`.

    Returns:
        A contiguous ``uint8`` tensor of shape ``(3, H, W)`` in RGB order, values 0-255 (the layout
        torchvision's detection transforms take after ``.float() / 255``).

    Raises:
        ImageLoadError: With ``reason`` in :data:`REASONS`.
    """
    import torch

    image = load_image(source, max_pixels=max_pixels, apply_exif_orientation=apply_exif_orientation)
    pixels = np.array(image, dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()  # (3, H, W)


def _open_source(source: ImageSource) -> tuple[str, IO[bytes]]:
    """Turns a path, bytes or file object into (label for errors, readable binary stream)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise ImageLoadError("<bytes>", "empty")
        return "<bytes>", io.BytesIO(data)
    if hasattr(source, "read"):
        return str(getattr(source, "name", "<file object>")), source  # type: ignore[return-value]
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"load_image takes a path, bytes or a binary file object, not {type(source).__name__}")
    path = os.fspath(source)
    try:
        if os.path.isdir(path):
            raise ImageLoadError(path, "is_directory")
        if os.stat(path).st_size == 0:
            raise ImageLoadError(path, "empty")
        return path, open(path, "rb")
    except FileNotFoundError as err:
        raise ImageLoadError(path, "missing") from err
    except NotADirectoryError as err:  # a parent component is a file
        raise ImageLoadError(path, "missing", str(err)) from err
    except OSError as err:
        raise ImageLoadError(path, "unreadable", str(err)) from err


def _decode(label: str, stream: IO[bytes], max_pixels: int | None, apply_exif_orientation: bool) -> Image.Image:
    """Opens the header, checks the size, decodes frame 0, orients and converts to RGB."""
    try:
        with warnings.catch_warnings():
            # This module checks the pixel count itself (below), so PIL's warning would be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(stream)
    except UnidentifiedImageError as err:
        raise ImageLoadError(label, "not_an_image", str(err)) from err
    except Image.DecompressionBombError as err:
        raise ImageLoadError(label, "too_large", str(err)) from err
    except Exception as err:  # a header PIL recognised but could not parse
        raise ImageLoadError(label, _decode_failure_reason(err), f"{type(err).__name__}: {err}") from err

    with image:
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageLoadError(label, "too_large", f"{width}x{height} = {width * height} pixels > {max_pixels}")
        if width <= 0 or height <= 0:
            raise ImageLoadError(label, "corrupt", f"header gives size {width}x{height}")
        try:
            image.load()
        except Image.DecompressionBombError as err:
            raise ImageLoadError(label, "too_large", str(err)) from err
        except Exception as err:  # OSError, SyntaxError, EOFError, ValueError, struct.error, zlib.error ...
            raise ImageLoadError(label, _decode_failure_reason(err), f"{type(err).__name__}: {err}") from err
        if apply_exif_orientation:
            image = _apply_exif_orientation(label, image)
        return _to_rgb(label, image)


def _decode_failure_reason(err: Exception) -> str:
    """'truncated' when the decoder ran out of data, 'corrupt' otherwise."""
    text = str(err).lower()
    if isinstance(err, EOFError) or "truncated" in text or "end of file" in text or "premature end" in text:
        return "truncated"
    return "corrupt"


def _apply_exif_orientation(label: str, image: Image.Image) -> Image.Image:
    """Rotates/flips by the EXIF orientation tag; a broken EXIF block leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception as err:  # malformed EXIF must not cost the image
        logger.debug("ignoring unreadable EXIF orientation of %s: %s", label, err)
        return image


def _to_rgb(label: str, image: Image.Image) -> Image.Image:
    """Converts any PIL mode to 8-bit RGB (see the module docstring for the rules)."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.float64)  # (H, W), 0..65535
        return _grey_to_rgb(values * (255.0 / 65535.0))
    if mode == "I":
        values = np.asarray(image).astype(np.float64)  # (H, W), int32 range
        if values.size and values.min() >= 0 and values.max() <= 65535:
            return _grey_to_rgb(values * (255.0 / 65535.0))
        return _grey_to_rgb(_stretch(values))
    if mode == "F":
        values = np.asarray(image).astype(np.float64)  # (H, W)
        finite = np.isfinite(values)
        values = np.where(finite, values, 0.0)
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            return _grey_to_rgb(values * 255.0)
        return _grey_to_rgb(_stretch(values))
    if mode in _ALPHA_MODES or "transparency" in image.info:
        try:
            rgba = image.convert("RGBA")
        except (ValueError, OSError) as err:
            raise ImageLoadError(label, "unsupported_mode", f"{mode}: {err}") from err
        background = Image.new("RGB", rgba.size, _WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if mode in _DIRECT_TO_RGB_MODES:
        # convert() always returns a new image, so nothing keeps the source file open.
        return image.convert("RGB")
    try:  # LAB, HSV and rarer modes: let PIL try
        return image.convert("RGB")
    except (ValueError, OSError) as err:
        raise ImageLoadError(label, "unsupported_mode", f"{mode}: {err}") from err


def _stretch(values: np.ndarray) -> np.ndarray:
    """Linearly maps [min, max] to [0, 255]; a constant image maps to 0."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values)
    return (values - low) * (255.0 / (high - low))


def _grey_to_rgb(values: np.ndarray) -> Image.Image:
    """(H, W) floats in [0, 255] → RGB image, rounded to the nearest level."""
    grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)  # (H, W)
    return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2))  # (H, W, 3)
