"""The local Wiener filter of the decoded small image's luminance (bidsrecon.decoding.pixel_denoise)."""
import numpy as np
from scipy.ndimage import gaussian_filter

from bidsrecon.decoding.pixel_denoise import suppress_noise
from bidsrecon.decoding.pixel_prf import from_channels, to_channels

SIDE = 32


def _images(channels):
    """(n, 3, SIDE, SIDE) channel departures from grey to RGB images."""
    return from_channels(channels.reshape(len(channels), 3, -1), SIDE).astype(np.float32)


def _noise(value):
    return np.full((1, 3, SIDE * SIDE), value)


GREY = np.zeros(3 * SIDE * SIDE)  # the prior mean of these tests: grey, luminance departure 0


def test_a_uniform_departure_keeps_the_share_the_signal_accounts_for():
    """Departure d everywhere and noise variance v: the window's mean square is d², kept (d² − v) / d²."""
    channels = np.zeros((1, 3, SIDE, SIDE))
    channels[:, 0], channels[:, 1] = 0.2, 0.1
    cleaned = to_channels(suppress_noise(_images(channels), _noise(0.01), GREY)).reshape(1, 3, SIDE, SIDE)
    np.testing.assert_allclose(cleaned[:, 0], 0.2 * (0.04 - 0.01) / 0.04, atol=1e-6)
    np.testing.assert_allclose(cleaned[:, 1], 0.1, atol=1e-6)  # colour is left as decoded


def test_noise_alone_goes_to_the_prior_mean_and_a_strong_square_stays():
    rng = np.random.default_rng(0)
    channels = np.zeros((2, 3, SIDE, SIDE))
    # Item 0: noise of variance 0.002 per pixel (smooth, as decoded noise is), nothing else.
    texture = gaussian_filter(rng.standard_normal((SIDE, SIDE)), 1.0)
    channels[0, 0] = texture / texture.std() * np.sqrt(0.002)
    # Item 1: a bright square far above that noise on an exact grey background.
    channels[1, 0, 10:22, 10:22] = 0.4
    noise = np.full((2, 3, SIDE * SIDE), 0.002)
    cleaned = to_channels(suppress_noise(_images(channels), noise, GREY)).reshape(2, 3, SIDE, SIDE)
    assert np.abs(cleaned[0, 0]).mean() < 0.25 * np.abs(channels[0, 0]).mean()
    inside = cleaned[1, 0, 12:20, 12:20]
    assert inside.min() > 0.97 * 0.4
    assert np.abs(cleaned[1, 0, :6]).max() < 1e-6  # the background stays grey


def test_the_prior_mean_is_what_departures_are_measured_from():
    """An image equal to the prior mean, however bright, is returned as it is."""
    mean = np.zeros((3, SIDE, SIDE))
    mean[0] = np.linspace(-0.3, 0.3, SIDE)[None]
    image = _images(mean[None])
    cleaned = suppress_noise(image, _noise(0.05), mean.ravel())
    np.testing.assert_allclose(cleaned, image, atol=1e-6)


def test_without_noise_nothing_changes():
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 1, (3, 3, SIDE, SIDE)).astype(np.float32)
    cleaned = suppress_noise(images, np.zeros((3, 3, SIDE * SIDE)), GREY)
    assert cleaned.dtype == np.float32 and cleaned.shape == images.shape
    np.testing.assert_allclose(cleaned, images, atol=1e-6)
