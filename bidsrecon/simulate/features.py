"""Image feature maps that drive the simulated visual cortex.

Local luminance, colour opponency (red−green, blue−yellow), colour magnitude and
Gabor contrast energy at three scales and four orientations — the kind of features
population-receptive-field models of early visual cortex use (Kay et al. 2013,
"Compressive spatial summation in human visual cortex"). Nothing here comes from a
deep network, so the decoder's encoder cannot grade itself on this brain.
"""
import numpy as np
from PIL import Image
from scipy.signal import fftconvolve

# Side, in pixels, of the grid on which features are computed; the stimulus field
# (12 degrees in ds001506) spans it.
MODEL_SIZE = 64
GABOR_WAVELENGTHS_PX = (3.0, 6.0, 12.0)
GABOR_ORIENTATIONS = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
LINEAR_CHANNELS = ("luminance", "red_green", "blue_yellow")
MAGNITUDE_CHANNEL = "colour_magnitude"
ENERGY_CHANNELS = tuple(
    f"energy_l{wavelength:g}_o{index}"
    for wavelength in GABOR_WAVELENGTHS_PX
    for index in range(len(GABOR_ORIENTATIONS))
)
CHANNELS = LINEAR_CHANNELS + (MAGNITUDE_CHANNEL,) + ENERGY_CHANNELS


def _downsample(pixels, size):
    if pixels.shape[1] == size:
        return pixels.astype(np.float32) / 255.0
    resized = [
        np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BOX))
        for image in pixels
    ]
    return np.stack(resized).astype(np.float32) / 255.0


def _gabor_pair(wavelength, orientation):
    """Even (zero-mean) and odd Gabor kernels with unit L2 norm."""
    sigma = 0.56 * wavelength  # about one octave of bandwidth
    half = int(np.ceil(3 * sigma))
    offsets = np.arange(-half, half + 1)
    x, y = np.meshgrid(offsets, offsets, indexing="xy")
    along = x * np.cos(orientation) + y * np.sin(orientation)
    envelope = np.exp(-(x ** 2 + y ** 2) / (2 * sigma ** 2))
    even = envelope * np.cos(2 * np.pi * along / wavelength)
    even -= envelope * even.sum() / envelope.sum()
    odd = envelope * np.sin(2 * np.pi * along / wavelength)
    return even / np.linalg.norm(even), odd / np.linalg.norm(odd)


def _contrast_energy(luminance):
    """Quadrature-pair Gabor energy, shape (n_images, n_energy_channels, size, size)."""
    energies = []
    for wavelength in GABOR_WAVELENGTHS_PX:
        for orientation in GABOR_ORIENTATIONS:
            even, odd = _gabor_pair(wavelength, orientation)
            # Zero padding is grey padding: luminance is centred on the background.
            even_response = fftconvolve(luminance, even[None], mode="same", axes=(1, 2))
            odd_response = fftconvolve(luminance, odd[None], mode="same", axes=(1, 2))
            energies.append(np.sqrt(even_response ** 2 + odd_response ** 2))
    return np.stack(energies, axis=1)


def feature_maps(pixels, size=MODEL_SIZE):
    """Compute the feature maps of a batch of RGB images.

    Parameters
    ----------
    pixels : ndarray, shape (n_images, height, width, 3), uint8
        Square images; the background grey (128) maps to zero in every channel.
    size : int
        Side of the feature grid.

    Returns
    -------
    ndarray, shape (n_images, len(CHANNELS), size, size), float32
        Channels in the order of :data:`CHANNELS`.
    """
    if pixels.ndim != 4 or pixels.shape[3] != 3 or pixels.shape[1] != pixels.shape[2]:
        raise ValueError(f"expected (n, side, side, 3) RGB images; got shape {pixels.shape}")
    rgb = _downsample(pixels, size)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    luminance = 0.299 * red + 0.587 * green + 0.114 * blue - 0.5
    red_green = red - green
    blue_yellow = blue - (red + green) / 2
    magnitude = np.hypot(red_green, blue_yellow)
    linear = np.stack([luminance, red_green, blue_yellow, magnitude], axis=1)
    energy = _contrast_energy(luminance).astype(np.float32)
    return np.concatenate([linear, energy], axis=1)
