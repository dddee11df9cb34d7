"""Pixels of the simulated stimuli: photograph crops, textures, colour shapes and letters.

Every image is drawn offline: photographs come from scikit-image's bundled data and
scikit-learn's sample images, the rest is drawn with numpy and Pillow. Images are RGB
``uint8`` arrays of shape (size, size, 3).
"""
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from skimage import data as skdata
from sklearn.datasets import load_sample_images

from bidsrecon.images import BACKGROUND

# The screen around an image: the background every stimulus is shown over.
GREY = BACKGROUND

# Photographs that only natural *test* images are cut from, so that no training image
# shares a photograph with a test image (ds001506's test images come from other
# ImageNet categories than its training images).
TEST_PHOTOGRAPHS = ("astronaut", "chelsea", "coffee", "rocket", "china")
TRAINING_PHOTOGRAPHS = (
    "flower", "hubble_deep_field", "immunohistochemistry", "retina", "colorwheel",
    "motorcycle", "logo", "camera", "brick", "grass", "gravel", "moon", "coins",
    "clock", "page", "text", "cell",
)
TEXTURE_KINDS = ("blobs", "grating", "collage", "pink_noise")

SHAPE_NAMES = ("square", "smallring", "largering", "+", "X")
SHAPE_COLOURS = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
    "yellow": (255, 255, 0), "magenta": (255, 0, 255), "cyan": (0, 255, 255),
    "white": (255, 255, 255), "black": (0, 0, 0),
}
# Supersampling factor for anti-aliased drawing.
_SUPERSAMPLE = 4


def _sklearn_sample(index):
    return load_sample_images().images[index]


_PHOTOGRAPH_LOADERS = {
    "astronaut": skdata.astronaut,
    "chelsea": skdata.chelsea,
    "coffee": skdata.coffee,
    "rocket": skdata.rocket,
    "china": lambda: _sklearn_sample(0),
    "flower": lambda: _sklearn_sample(1),
    "hubble_deep_field": skdata.hubble_deep_field,
    "immunohistochemistry": skdata.immunohistochemistry,
    "retina": skdata.retina,
    "colorwheel": skdata.colorwheel,
    "motorcycle": lambda: skdata.stereo_motorcycle()[0],
    "logo": skdata.logo,
    "camera": skdata.camera,
    "brick": skdata.brick,
    "grass": skdata.grass,
    "gravel": skdata.gravel,
    "moon": skdata.moon,
    "coins": skdata.coins,
    "clock": skdata.clock,
    "page": skdata.page,
    "text": skdata.text,
    "cell": skdata.cell,
}


def load_photograph(name):
    """Load a bundled photograph as float RGB in [0, 1].

    Grey-level photographs come back with three equal channels; an alpha channel
    is composited onto white.

    Parameters
    ----------
    name : str
        One of :data:`TEST_PHOTOGRAPHS` or :data:`TRAINING_PHOTOGRAPHS`.

    Returns
    -------
    ndarray, shape (height, width, 3), float64
    """
    pixels = np.asarray(_PHOTOGRAPH_LOADERS[name](), dtype=np.float64)
    if pixels.max() > 1.0:
        pixels = pixels / 255.0
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    if pixels.shape[2] == 4:
        alpha = pixels[:, :, 3:]
        pixels = pixels[:, :, :3] * alpha + (1.0 - alpha)
    return pixels


def _to_uint8(pixels):
    return np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)


def _resize(pixels, size):
    image = Image.fromarray(_to_uint8(pixels))
    return np.asarray(image.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float64) / 255.0


def _is_grey(pixels):
    return np.ptp(pixels - pixels.mean(axis=2, keepdims=True)) < 1e-6


def _colourise(grey, rng):
    """Map grey levels onto a random dark-to-light colour ramp (adds colour variety)."""
    dark = rng.uniform(0.0, 0.4, size=3)
    light = rng.uniform(0.6, 1.0, size=3)
    level = grey[:, :, :1]
    return dark + level * (light - dark)


def _jitter_colour(pixels, rng):
    """Random brightness, contrast and saturation changes, as in data augmentation."""
    brightness = rng.uniform(0.85, 1.15)
    contrast = rng.uniform(0.8, 1.2)
    saturation = rng.uniform(0.7, 1.3)
    grey = pixels.mean(axis=2, keepdims=True)
    pixels = grey + saturation * (pixels - grey)
    pixels = pixels.mean() + contrast * (pixels - pixels.mean())
    return np.clip(pixels * brightness, 0.0, 1.0)


def photograph_crop(photograph, size, rng, colourise_grey=True):
    """Cut a random square crop of a photograph, flip and colour-jitter it.

    Parameters
    ----------
    photograph : ndarray, shape (height, width, 3)
        Float RGB in [0, 1].
    size : int
        Output side in pixels.
    rng : numpy.random.Generator
    colourise_grey : bool
        Tint grey-level photographs with a random colour ramp.

    Returns
    -------
    ndarray, shape (size, size, 3), uint8
    """
    height, width = photograph.shape[:2]
    side = int(round(rng.uniform(0.45, 1.0) * min(height, width)))
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    crop = _resize(photograph[top:top + side, left:left + side], size)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if colourise_grey and _is_grey(crop):
        crop = _colourise(crop, rng)
    return _to_uint8(_jitter_colour(crop, rng))


def _grid(size):
    coords = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    return np.meshgrid(coords, coords, indexing="xy")


def _blobs(size, rng):
    x, y = _grid(size)
    pixels = np.broadcast_to(rng.uniform(0.2, 0.8, size=3), (size, size, 3)).copy()
    for _ in range(int(rng.integers(3, 9))):
        cx, cy = rng.uniform(-1, 1, size=2)
        radius = rng.uniform(0.1, 0.6)
        weight = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius ** 2))[:, :, None]
        pixels = pixels * (1 - weight) + rng.uniform(0, 1, size=3) * weight
    return pixels


def _grating(size, rng):
    x, y = _grid(size)
    pixels = np.zeros((size, size, 3))
    for _ in range(int(rng.integers(1, 3))):
        angle = rng.uniform(0, np.pi)
        cycles = rng.uniform(1.5, 10.0)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(np.pi * cycles * (x * np.cos(angle) + y * np.sin(angle)) + phase)
        pixels += wave[:, :, None] * rng.uniform(-0.5, 0.5, size=3)
    return 0.5 + pixels / 2


def _collage(size, rng):
    scale = _SUPERSAMPLE * size
    background = tuple(int(v) for v in rng.integers(0, 256, size=3))
    image = Image.new("RGB", (scale, scale), background)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 10))):
        x0, y0 = rng.uniform(-0.2, 1.0, size=2) * scale
        width, height = rng.uniform(0.1, 0.6, size=2) * scale
        box = [x0, y0, x0 + width, y0 + height]
        fill = tuple(int(v) for v in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.ellipse(box, fill=fill)
        else:
            draw.rectangle(box, fill=fill)
    image = image.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.float64) / 255.0


def _pink_noise(size, rng):
    """Colour noise with a 1/f amplitude spectrum, like natural images."""
    frequency = np.hypot(*np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size)))
    frequency[0, 0] = 1.0
    exponent = rng.uniform(1.0, 1.6)
    channels = []
    for _ in range(3):
        spectrum = np.fft.fft2(rng.standard_normal((size, size))) / frequency ** exponent
        spectrum[0, 0] = 0.0
        channels.append(np.real(np.fft.ifft2(spectrum)))
    noise = np.stack(channels, axis=2)
    # Correlated channels keep the colours natural-looking rather than rainbow.
    mixing = np.eye(3) * 0.4 + 0.6 * rng.uniform(0.5, 1.0, size=(3, 3))
    noise = noise @ mixing
    return 0.5 + 0.18 * noise / noise.std()


_TEXTURE_DRAWERS = {
    "blobs": _blobs, "grating": _grating, "collage": _collage, "pink_noise": _pink_noise,
}


def texture(kind, size, rng):
    """Draw a procedural texture (training variety only).

    Parameters
    ----------
    kind : str
        One of :data:`TEXTURE_KINDS`.
    size : int
    rng : numpy.random.Generator

    Returns
    -------
    ndarray, shape (size, size, 3), uint8
    """
    return _to_uint8(_TEXTURE_DRAWERS[kind](size, rng))


def _shape_outline(draw, shape, scale, fill):
    centre = scale / 2

    def box(half):
        return [centre - half, centre - half, centre + half, centre + half]

    if shape == "square":
        draw.rectangle(box(0.25 * scale), fill=fill)
    elif shape in ("smallring", "largering"):
        outer = (0.18 if shape == "smallring" else 0.38) * scale
        draw.ellipse(box(outer), fill=fill)
        draw.ellipse(box(outer - 0.07 * scale), fill=GREY)
    else:
        half_length, half_width = 0.3 * scale, 0.07 * scale
        draw.rectangle([centre - half_length, centre - half_width,
                        centre + half_length, centre + half_width], fill=fill)
        draw.rectangle([centre - half_width, centre - half_length,
                        centre + half_width, centre + half_length], fill=fill)


def colour_shape(colour, shape, size):
    """Draw one of ds001506's artificial shapes on a grey background.

    Parameters
    ----------
    colour : str
        A key of :data:`SHAPE_COLOURS`.
    shape : str
        One of :data:`SHAPE_NAMES`.
    size : int

    Returns
    -------
    ndarray, shape (size, size, 3), uint8
    """
    scale = _SUPERSAMPLE * size
    image = Image.new("RGB", (scale, scale), GREY)
    _shape_outline(ImageDraw.Draw(image), shape, scale, SHAPE_COLOURS[colour])
    if shape == "X":
        image = image.rotate(45, resample=Image.Resampling.BICUBIC, fillcolor=GREY)
    return np.asarray(image.resize((size, size), Image.Resampling.LANCZOS))


def centred_text(text, size, height_fraction):
    """Render black text centred on grey with Pillow's built-in scalable font.

    Parameters
    ----------
    text : str
    size : int
        Image side in pixels.
    height_fraction : float
        Font size as a fraction of the image side.

    Returns
    -------
    ndarray, shape (size, size, 3), uint8
    """
    scale = _SUPERSAMPLE * size
    font = ImageFont.load_default(size=int(height_fraction * scale))
    image = Image.new("RGB", (scale, scale), GREY)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    origin = ((scale - (right - left)) / 2 - left, (scale - (bottom - top)) / 2 - top)
    draw.text(origin, text, fill=(0, 0, 0), font=font)
    return np.asarray(image.resize((size, size), Image.Resampling.LANCZOS))
