"""Reading stimuli and writing reconstructions (bidsrecon.images)."""
import struct
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_INPUT_MISSING, BidsReconError
from bidsrecon.images import load_image, load_images, read_rgb, save_png, to_display, to_rgb

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _three_bands(path, width=60, height=30):
    """A wide image: red left margin, blue centre square, green right margin."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    margin = (width - height) // 2
    pixels[:, :margin] = RED
    pixels[:, margin:margin + height] = BLUE
    pixels[:, margin + height:] = GREEN
    Image.fromarray(pixels).save(path)
    return path


def test_load_image_crops_the_centre_square_and_resizes(tmp_path):
    image = load_image(_three_bands(tmp_path / "bands.png"), 12)
    assert image.shape == (12, 12, 3)
    assert image.dtype == np.float32
    # Only the blue centre survives the crop.
    np.testing.assert_allclose(image[..., 2], 1.0, atol=1e-6)
    np.testing.assert_allclose(image[..., :2], 0.0, atol=1e-6)


def test_load_image_converts_grey_and_rgba_to_rgb(tmp_path):
    grey = np.tile(np.linspace(0, 255, 16, dtype=np.uint8), (16, 1))
    Image.fromarray(grey, mode="L").save(tmp_path / "grey.png")
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128
    Image.fromarray(rgba).save(tmp_path / "rgba.png")

    loaded_grey = load_image(tmp_path / "grey.png", 16)
    loaded_rgba = load_image(tmp_path / "rgba.png", 16)

    assert loaded_grey.shape == loaded_rgba.shape == (16, 16, 3)
    np.testing.assert_allclose(loaded_grey[..., 0], loaded_grey[..., 2])
    np.testing.assert_allclose(loaded_grey[..., 0], grey / 255.0, atol=1e-6)
    # Half-transparent red over the grey background (128): 200 * 128/255 + 128 * 127/255 = 164.
    np.testing.assert_allclose(loaded_rgba, np.broadcast_to(np.array([164, 64, 64]) / 255.0, (16, 16, 3)), atol=1e-6)


def test_load_image_downsampling_is_antialiased(tmp_path):
    # A one-pixel checkerboard averages to mid-grey; point sampling would keep 0s and 1s.
    checker = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    Image.fromarray(checker, mode="L").save(tmp_path / "checker.png")
    image = load_image(tmp_path / "checker.png", 8)
    np.testing.assert_allclose(image, 0.5, atol=0.05)


def test_load_images_stacks_in_order(tmp_path):
    for name, colour in [("red.png", RED), ("green.png", GREEN)]:
        Image.new("RGB", (20, 10), colour).save(tmp_path / name)
    images = load_images([tmp_path / "green.png", tmp_path / "red.png"], 4)
    assert images.shape == (2, 4, 4, 3)
    assert images[0, ..., 1].min() == 1.0 and images[1, ..., 0].min() == 1.0
    assert load_images([], 4).shape == (0, 4, 4, 3)


def test_missing_or_unreadable_image_names_the_file(tmp_path):
    with pytest.raises(BidsReconError, match="missing.png") as missing:
        load_image(tmp_path / "missing.png", 8)
    assert missing.value.exit_code == EXIT_INPUT_MISSING

    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a picture")
    with pytest.raises(BidsReconError, match="notes.png") as unreadable:
        load_image(not_an_image, 8)
    assert unreadable.value.exit_code == EXIT_INPUT_MISSING


@pytest.mark.parametrize("size", [0, -3, 2.5, "64"])
def test_bad_size_is_refused(tmp_path, size):
    with pytest.raises(ValueError, match="positive integer"):
        load_image(_three_bands(tmp_path / "bands.png"), size)


def test_save_png_rounds_and_clips(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.uniform(-0.2, 1.2, size=(5, 7, 3))
    save_png(image, tmp_path / "out.png")
    written = np.asarray(Image.open(tmp_path / "out.png"))
    assert written.dtype == np.uint8 and written.shape == (5, 7, 3)
    np.testing.assert_array_equal(written, np.round(np.clip(image, 0, 1) * 255))


def test_save_png_refuses_a_non_rgb_array(tmp_path):
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        save_png(np.zeros((4, 4)), tmp_path / "out.png")


def test_to_display_stretches_and_ignores_outliers():
    ramp = np.linspace(0.4, 0.6, 10 * 10 * 3).reshape(10, 10, 3)
    ramp[0, 0, 0] = 50.0  # one outlier must not squash the rest of the range
    shown = to_display(ramp)
    assert shown.dtype == np.float32
    assert shown.min() == 0.0 and shown.max() == 1.0
    # Most of the ramp still spans the range, not a sliver next to the outlier.
    assert np.percentile(shown, 90) - np.percentile(shown, 10) > 0.7
    # Order of values is kept.
    body = shown.ravel()[1:]
    assert np.all(np.diff(body) >= 0)


def test_to_display_leaves_a_flat_image_as_it_is():
    flat = np.full((4, 4, 3), 0.3)
    np.testing.assert_allclose(to_display(flat), 0.3, atol=1e-7)


def test_load_image_as_uint8_keeps_the_values_float32_divides(tmp_path):
    import numpy as np
    from PIL import Image

    from bidsrecon.images import load_image, load_images

    path = tmp_path / "gradient.png"
    Image.fromarray(np.arange(48 * 48 * 3, dtype=np.uint8).reshape(48, 48, 3)).save(path)
    as_uint8 = load_image(path, 16, dtype=np.uint8)
    assert as_uint8.dtype == np.uint8
    np.testing.assert_array_equal(as_uint8.astype(np.float32) / 255.0, load_image(path, 16))
    assert load_images([path, path], 16, dtype=np.uint8).dtype == np.uint8


# Every mode Pillow reads, written to a file where Pillow can write it (HSV and the premultiplied
# modes exist only in memory), and the exact 8-bit RGB pixels read_rgb gives for it.
GREY_BACKGROUND = (128, 128, 128)


def _palette(mode="P"):
    image = Image.new(mode, (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255])  # index 0 red, 1 blue
    image.putpixel((1, 0), 1 if mode == "P" else (1, 255))
    return image


def _pixels(values, mode):
    return Image.frombytes(mode, (len(values), 1), np.asarray(values).astype(
        {"I;16": "<u2", "I;16B": ">u2", "I": "<i4", "F": "<f4"}[mode]).tobytes())


def _bands(mode, pixels):
    image = Image.new(mode, (len(pixels), 1))
    for x, value in enumerate(pixels):
        image.putpixel((x, 0), value)
    return image


MODES = [
    # name, image, file format (None: in memory), save options, mode read back, expected RGB pixels
    ("16-bit grey PNG", _pixels([0, 32768, 65535, 257], "I;16"), "PNG", {}, "I;16",
     [(0, 0, 0), (128, 128, 128), (255, 255, 255), (1, 1, 1)]),
    ("16-bit big-endian TIFF", _pixels([0, 32768, 65535], "I;16B"), "TIFF", {}, "I;16B",
     [(0, 0, 0), (128, 128, 128), (255, 255, 255)]),
    ("32-bit integer TIFF of 16-bit data", _pixels([0, 32768, 65535], "I"), "TIFF", {}, "I",
     [(0, 0, 0), (128, 128, 128), (255, 255, 255)]),
    ("32-bit float TIFF in 0-1", _pixels([0.0, 0.5, 1.0], "F"), "TIFF", {}, "F",
     [(0, 0, 0), (128, 128, 128), (255, 255, 255)]),
    ("1-bit PNG", _bands("1", [0, 1]), "PNG", {}, "1", [(0, 0, 0), (255, 255, 255)]),
    ("8-bit grey PNG", _bands("L", [0, 77, 255]), "PNG", {}, "L", [(0, 0, 0), (77, 77, 77), (255, 255, 255)]),
    ("grey PNG with a transparent value", _bands("L", [0, 77]), "PNG", {"transparency": 0}, "L",
     [GREY_BACKGROUND, (77, 77, 77)]),
    ("palette PNG", _palette(), "PNG", {}, "P", [(255, 0, 0), (0, 0, 255)]),
    ("palette PNG with a transparent index", _palette(), "PNG", {"transparency": 0}, "P",
     [GREY_BACKGROUND, (0, 0, 255)]),
    ("palette GIF with a transparent index", _palette(), "GIF", {"transparency": 0}, "P",
     [GREY_BACKGROUND, (0, 0, 255)]),
    ("palette with alpha TIFF", _palette("PA"), "TIFF", {}, "PA", [GREY_BACKGROUND, (0, 0, 255)]),
    ("grey with alpha PNG", _bands("LA", [(0, 0), (0, 255), (255, 128)]), "PNG", {}, "LA",
     [GREY_BACKGROUND, (0, 0, 0), (192, 192, 192)]),
    ("RGBA PNG", _bands("RGBA", [(255, 0, 0, 0), (255, 0, 0, 255), (200, 0, 0, 128)]), "PNG", {}, "RGBA",
     [GREY_BACKGROUND, (255, 0, 0), (164, 64, 64)]),
    ("RGB PNG with a transparent colour", _bands("RGB", [(0, 0, 0), (9, 8, 7)]), "PNG",
     {"transparency": (0, 0, 0)}, "RGB", [GREY_BACKGROUND, (9, 8, 7)]),
    ("CMYK TIFF", _bands("CMYK", [(0, 255, 255, 0), (0, 0, 0, 255), (0, 0, 0, 0)]), "TIFF", {}, "CMYK",
     [(255, 0, 0), (0, 0, 0), (255, 255, 255)]),
    ("YCbCr TIFF", _bands("YCbCr", [(76, 85, 255), (255, 128, 128)]), "TIFF", {}, "YCbCr",
     [(254, 0, 0), (255, 255, 255)]),
    # Pillow's CIELAB -> sRGB transform lands within 1-2 levels of exact black and white.
    ("LAB TIFF", _bands("LAB", [(0, 128, 128), (255, 128, 128)]), "TIFF", {}, "LAB", [(1, 0, 1), (254, 255, 254)]),
    ("HSV in memory", _bands("HSV", [(0, 255, 255), (0, 0, 128)]), None, {}, "HSV", [(255, 0, 0), (128, 128, 128)]),
    ("premultiplied RGBa in memory", _bands("RGBa", [(0, 0, 0, 0), (255, 0, 0, 255)]), None, {}, "RGBa",
     [GREY_BACKGROUND, (255, 0, 0)]),
]


@pytest.mark.parametrize("name, image, file_format, options, mode, expected", MODES, ids=[m[0] for m in MODES])
def test_every_mode_becomes_the_rgb_a_viewer_shows(tmp_path, name, image, file_format, options, mode, expected):
    if file_format is None:
        converted = to_rgb(image)
    else:
        path = tmp_path / f"stimulus.{file_format.lower()}"
        image.save(path, format=file_format, **options)
        with Image.open(path) as reopened:
            assert reopened.mode == mode  # the file really holds the mode under test
        converted = read_rgb(path)
    assert converted.mode == "RGB"
    assert [converted.getpixel((x, 0)) for x in range(len(expected))] == expected


def test_a_16_bit_stimulus_is_not_white_after_loading(tmp_path):
    # The bug this guards against: Pillow's convert("RGB") clips 16-bit grey, so mid-grey became white.
    _pixels([32768] * 64, "I;16").resize((8, 8)).save(tmp_path / "grey16.png")
    np.testing.assert_allclose(load_image(tmp_path / "grey16.png", 4), 128 / 255, atol=1e-6)


@pytest.mark.parametrize("image, fragment", [
    (_pixels([0, 70000], "I"), r"32-bit integer image .* values 0 to 70000"),
    (_pixels([-1.0, 0.5], "F"), r"32-bit float image .* values -1 to 0.5"),
    (_pixels([np.nan, 0.5], "F"), "non-finite values"),
])
def test_values_outside_the_assumed_range_are_refused(tmp_path, image, fragment):
    image.save(tmp_path / "odd.tif")
    with pytest.raises(BidsReconError, match=fragment) as error:
        read_rgb(tmp_path / "odd.tif")
    assert "odd.tif" in str(error.value) and error.value.exit_code == EXIT_BAD_ARGUMENTS


def test_a_mode_without_conversion_is_refused():
    with pytest.raises(BidsReconError, match="cannot convert its mode La") as error:
        to_rgb(Image.new("La", (1, 1)), "premultiplied.png")
    assert "premultiplied.png" in str(error.value) and error.value.exit_code == EXIT_BAD_ARGUMENTS


def png_claiming_size(path, width, height):
    """A tiny valid PNG whose header claims ``width`` x ``height`` (a decompression bomb's signature)."""
    buffer = BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    Path(path).write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("side", [9000, 10000, 100000])  # ours; Pillow's warning; Pillow's error
def test_a_huge_image_is_refused_before_decoding(tmp_path, side):
    path = png_claiming_size(tmp_path / "bomb.png", side, side)
    with pytest.raises(BidsReconError, match="too large to be a stimulus") as error:
        read_rgb(path)
    assert "bomb.png" in str(error.value) and error.value.exit_code == EXIT_BAD_ARGUMENTS


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_a_truncated_image_is_refused(tmp_path, suffix):
    path = tmp_path / f"whole.{suffix}"
    Image.effect_noise((64, 64), 40).convert("RGB").save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BidsReconError, match="truncated") as error:
        read_rgb(path)
    assert error.value.exit_code == EXIT_INPUT_MISSING
