"""Reading stimuli and writing reconstructions (bidsrecon.images)."""
import numpy as np
import pytest
from PIL import Image

from bidsrecon.errors import EXIT_INPUT_MISSING, BidsReconError
from bidsrecon.images import load_image, load_images, save_png, to_display

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
    np.testing.assert_allclose(loaded_rgba[..., 0], 200 / 255.0, atol=1e-6)


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
