"""The robust image loader against bad and unusual files, each with a specific expected outcome."""
from __future__ import annotations

import io
import os
import pickle
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, features

from vlptm.data.images import DEFAULT_MAX_PIXELS, REASONS, ImageLoadError, load_image, load_image_tensor

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height followed by only a few bytes of the first row."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    first_row = zlib.compress(b"\x00" + b"\x80" * 30)  # filter byte + 10 grey pixels, nothing more
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", first_row)


def _noise_rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _saved(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


def _assert_error(source, reason: str, **kw) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        load_image(source, **kw)
    assert info.value.reason == reason, str(info.value)
    assert info.value.reason in REASONS
    return info.value


# --- files that must fail, each with its own reason ----------------------------------------------------------


def test_missing_path(tmp_path):
    err = _assert_error(tmp_path / "nope.jpg", "missing")
    assert err.path == str(tmp_path / "nope.jpg")
    assert "nope.jpg" in str(err) and "missing" in str(err)


def test_missing_parent_is_a_file(tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    _assert_error(tmp_path / "file" / "child.jpg", "missing")


def test_directory(tmp_path):
    (tmp_path / "dir.jpg").mkdir()
    _assert_error(str(tmp_path / "dir.jpg"), "is_directory")


def test_empty_file_and_empty_bytes(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    _assert_error(tmp_path / "empty.jpg", "empty")
    err = _assert_error(b"", "empty")
    assert err.path == "<bytes>"


@pytest.mark.parametrize("fmt, suffix", [("JPEG", ".jpg"), ("PNG", ".png")])
def test_truncated(tmp_path, fmt, suffix):
    data = _saved(_noise_rgb(64, 48), fmt)
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: len(data) // 2])
    _assert_error(path, "truncated")


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image, just some text\n" * 10)
    _assert_error(path, "not_an_image")


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.png"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _assert_error(path, "not_an_image")


def test_corrupt_compressed_stream():
    data = bytearray(_saved(_noise_rgb(40, 40), "PNG"))
    start = data.find(b"IDAT") + 4 + 50
    for i in range(start, start + 40):  # scramble the deflate stream in the middle of the pixel data
        data[i] ^= 0x5A
    _assert_error(bytes(data), "corrupt")


def test_os_error_is_unreadable(tmp_path):
    _assert_error(tmp_path / ("x" * 300 + ".jpg"), "unreadable")  # ENAMETOOLONG


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions and a non-root user")
def test_unreadable_permissions(tmp_path):
    path = tmp_path / "locked.png"
    path.write_bytes(_saved(_noise_rgb(4, 4), "PNG"))
    path.chmod(0)
    try:
        _assert_error(path, "unreadable")
    finally:
        path.chmod(0o644)


def test_over_pixel_limit_rejected_exactly_at_the_limit(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(_saved(_noise_rgb(100, 50), "PNG"))
    assert load_image(path, max_pixels=5000).size == (100, 50)
    err = _assert_error(path, "too_large", max_pixels=4999)
    assert "5000" in str(err)


def test_pixel_limit_checked_from_header_before_decoding(tmp_path):
    # The header claims 5000 x 5000 but almost no pixel data follows: decoding would fail as truncated,
    # so "too_large" proves the size was checked first.
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(5000, 5000))
    _assert_error(path, "too_large", max_pixels=1_000_000)
    _assert_error(path, "truncated", max_pixels=None)


def test_pil_decompression_bomb_error_is_typed(tmp_path):
    side = 20_000  # 4e8 pixels: above PIL's own error level even when our check is disabled
    assert side * side > DEFAULT_MAX_PIXELS
    _assert_error(_png_header_only(side, side), "too_large", max_pixels=None)
    _assert_error(_png_header_only(side, side), "too_large")


def test_error_survives_pickling():
    err = ImageLoadError("a/b.jpg", "truncated", "image file is truncated")
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.path, copy.reason, copy.detail, str(copy)) == (err.path, err.reason, err.detail, str(err))


# --- unusual files that must load, with exact modes, sizes and pixels -------------------------------------


def test_exif_orientation_6_rotates_clockwise(tmp_path):
    # Stored 60 x 30 with the top-left 30 x 15 quadrant red, the rest blue. Orientation 6 means "rotate
    # 90 degrees clockwise to display", which moves that quadrant to the top-right of a 30 x 60 image.
    stored = Image.new("RGB", (60, 30), BLUE)
    stored.paste(RED, (0, 0, 30, 15))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    stored.save(path, "JPEG", quality=95, exif=exif.tobytes())

    image = load_image(path)
    assert image.mode == "RGB" and image.size == (30, 60)
    pixels = np.asarray(image).astype(int)  # (H, W, 3)
    assert np.abs(pixels[8, 22] - RED).max() < 30  # top-right: red
    assert np.abs(pixels[8, 7] - BLUE).max() < 30  # top-left: blue
    assert np.abs(pixels[45, 22] - BLUE).max() < 30  # bottom-right: blue
    # Annotations made on the stored pixels can opt out of the rotation.
    stored_layout = load_image(path, apply_exif_orientation=False)
    assert stored_layout.size == (60, 30)
    assert np.abs(np.asarray(stored_layout).astype(int)[7, 15] - RED).max() < 30
    assert tuple(load_image_tensor(path, apply_exif_orientation=False).shape) == (3, 30, 60)


def test_grayscale_l(tmp_path):
    path = tmp_path / "grey.png"
    Image.fromarray(np.array([[0, 77], [200, 255]], dtype=np.uint8)).save(path)
    pixels = np.asarray(load_image(path))
    assert pixels.shape == (2, 2, 3)
    np.testing.assert_array_equal(pixels[..., 0], [[0, 77], [200, 255]])
    np.testing.assert_array_equal(pixels[..., 0], pixels[..., 2])


def test_palette_with_transparency_composited_on_white(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # index 0 black, index 1 red
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)  # index 0 (black) is fully transparent
    pixels = np.asarray(load_image(path))
    assert pixels[0, 0].tolist() == list(WHITE)
    assert pixels[0, 1].tolist() == list(RED)


def test_rgba_alpha_composited_on_white(tmp_path):
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (255, 0, 0, 0)  # fully transparent
    rgba[0, 2] = (0, 0, 255, 128)  # half-transparent blue
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba).save(path)
    pixels = np.asarray(load_image(path)).astype(int)
    assert pixels[0, 0].tolist() == list(RED)
    assert pixels[0, 1].tolist() == list(WHITE)
    np.testing.assert_allclose(pixels[0, 2], [127, 127, 255], atol=1)


def test_la_grey_with_alpha(tmp_path):
    path = tmp_path / "la.png"
    Image.fromarray(np.array([[[0, 255], [0, 0]]], dtype=np.uint8), mode="LA").save(path)
    pixels = np.asarray(load_image(path))
    assert pixels[0, 0].tolist() == [0, 0, 0] and pixels[0, 1].tolist() == list(WHITE)


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, "JPEG", quality=95)  # pure red in CMYK
    with Image.open(path) as raw:
        assert raw.mode == "CMYK"
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (16, 16)
    assert np.abs(np.asarray(image).astype(int)[8, 8] - RED).max() < 10


def test_16_bit_png_scaled_not_clipped(tmp_path):
    values = np.array([[0, 1000, 257 * 100, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")
    pixels = np.asarray(load_image(path))
    # 1000 / 257 = 3.9 -> 4; clipping (PIL's convert("L")) would give 255 for everything above 255.
    assert pixels[0, :, 0].tolist() == [0, 4, 100, 255]


def test_32_bit_integer_and_float_greyscale(tmp_path):
    wide = np.array([[-1000, 0, 1000]], dtype=np.int32)  # outside 0..65535: min-max stretched
    Image.fromarray(wide).save(tmp_path / "wide.tif")
    assert np.asarray(load_image(tmp_path / "wide.tif"))[0, :, 0].tolist() == [0, 128, 255]

    unit = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)  # [0, 1] floats: times 255
    Image.fromarray(unit).save(tmp_path / "unit.tif")
    assert np.asarray(load_image(tmp_path / "unit.tif"))[0, :, 0].tolist() == [0, 128, 255]


def test_one_bit(tmp_path):
    image = Image.new("1", (3, 1), 0)
    image.putpixel((1, 0), 1)
    path = tmp_path / "bits.png"
    image.save(path)
    pixels = np.asarray(load_image(path))
    assert pixels[0, :, 1].tolist() == [0, 255, 0]


def test_one_by_one(tmp_path):
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (12, 34, 56)).save(path)
    image = load_image(path)
    assert image.size == (1, 1) and image.getpixel((0, 0)) == (12, 34, 56)


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 6), colour) for colour in (RED, BLUE, (0, 255, 0))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(path) as raw:
        assert raw.n_frames == 3
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (8, 6)
    assert image.getpixel((4, 3)) == RED


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_webp_lossless(tmp_path):
    source = _noise_rgb(10, 7, seed=3)
    path = tmp_path / "pic.webp"
    source.save(path, "WEBP", lossless=True)
    np.testing.assert_array_equal(np.asarray(load_image(path)), np.asarray(source))


# --- sources and outputs -----------------------------------------------------------------------------------


def test_bytes_and_file_object_sources(tmp_path):
    source = _noise_rgb(5, 4, seed=4)
    data = _saved(source, "PNG")
    for given in (data, bytearray(data), memoryview(data), io.BytesIO(data)):
        np.testing.assert_array_equal(np.asarray(load_image(given)), np.asarray(source))
    _assert_error(b"GIF89a" + b"\x00" * 3, "not_an_image")


def test_result_is_decoded_and_detached_from_the_file(tmp_path):
    path = tmp_path / "gone.png"
    source = _noise_rgb(6, 6, seed=5)
    source.save(path)
    image = load_image(path)
    path.unlink()
    np.testing.assert_array_equal(np.asarray(image), np.asarray(source))


def test_tensor_layout(tmp_path):
    source = _noise_rgb(7, 5, seed=6)
    path = tmp_path / "t.png"
    source.save(path)
    tensor = load_image_tensor(path)
    assert tensor.dtype.is_floating_point is False and str(tensor.dtype) == "torch.uint8"
    assert tuple(tensor.shape) == (3, 5, 7) and tensor.is_contiguous()
    np.testing.assert_array_equal(tensor.permute(1, 2, 0).numpy(), np.asarray(source))
    with pytest.raises(ImageLoadError):
        load_image_tensor(tmp_path / "missing.png")


def test_unsupported_source_type():
    with pytest.raises(TypeError):
        load_image(12345)  # type: ignore[arg-type]


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns about the corrupt TIFF/EXIF tags it skips
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "TIFF", "BMP"] + (["WEBP"] if features.check("webp") else []))
def test_mutated_files_only_raise_image_load_error(fmt):
    # Seeded byte flips, cuts and header overwrites of a valid file: every outcome is an RGB image or a
    # typed ImageLoadError, never another exception (3,600 such cases ran clean while writing this).
    rng = np.random.default_rng(7)
    data = _saved(_noise_rgb(32, 24, seed=8), fmt)
    outcomes = set()
    for trial in range(60):
        mutated = bytearray(data)
        if trial % 3 == 0:
            for position in rng.integers(0, len(mutated), size=rng.integers(1, 8)):
                mutated[position] = rng.integers(0, 256)
        elif trial % 3 == 1:
            mutated = mutated[: rng.integers(1, len(mutated))]
        else:
            start = int(rng.integers(0, 64))
            mutated[start : start + 4] = rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
        try:
            image = load_image(bytes(mutated))
        except ImageLoadError as err:
            assert err.reason in REASONS
            outcomes.add(err.reason)
        else:
            assert image.mode == "RGB" and image.width * image.height > 0
            outcomes.add("ok")
    assert outcomes - {"ok"}, "no mutation was detected as bad"
