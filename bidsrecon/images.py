"""Reading stimulus images and writing reconstructions.

Images live in memory as float32 arrays of shape (H, W, 3), RGB in [0, 1].
"""
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from bidsrecon.errors import EXIT_INPUT_MISSING, BidsReconError

#: Percentiles the paper's figures clip to before stretching (REFERENCE.md §1, "Display").
DISPLAY_PERCENTILES = (2, 98)


def _check_size(size):
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"Expected the image size as a positive integer, got {size!r}.")


def _square_centre(image):
    """The largest centred square of a Pillow image."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def load_image(path, size, dtype=np.float32):
    """Read an image as RGB, crop its centre to a square and resize it.

    Grey and palette images are converted to RGB; an alpha channel is dropped.

    Parameters
    ----------
    path : str or Path
    size : int
        Side of the output in pixels; resizing is antialiased (Lanczos).
    dtype : {numpy.float32, numpy.uint8}, default numpy.float32
        uint8 keeps the resized 0-255 values (a quarter of the memory, for large stimulus
        sets); float32 divides them by 255.

    Returns
    -------
    ndarray, shape (size, size, 3), float32 in [0, 1] or uint8
    """
    _check_size(size)
    path = Path(path)
    try:
        with Image.open(path) as image:
            square = _square_centre(image.convert("RGB"))
    except FileNotFoundError as error:
        raise BidsReconError(f"Image not found: {path}", EXIT_INPUT_MISSING) from error
    except (UnidentifiedImageError, OSError) as error:
        raise BidsReconError(f"Cannot read image {path}: {error}",
                             EXIT_INPUT_MISSING) from error
    resized = square.resize((size, size), Image.Resampling.LANCZOS)
    if np.dtype(dtype) == np.uint8:
        return np.asarray(resized, dtype=np.uint8)
    return np.asarray(resized, dtype=np.float32) / 255.0


def load_images(paths, size, dtype=np.float32):
    """:func:`load_image` for each path, stacked.

    Returns
    -------
    ndarray, shape (n_images, size, size, 3), float32 in [0, 1] or uint8
    """
    _check_size(size)
    images = [load_image(path, size, dtype) for path in paths]
    if not images:
        return np.zeros((0, size, size, 3), dtype=dtype)
    return np.stack(images)


def _check_rgb(image):
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"Expected an image of shape (H, W, 3), got {image.shape}.")
    return image.astype(np.float64)


def save_png(image, path):
    """Write an RGB image in [0, 1] as an 8-bit PNG (values outside [0, 1] are clipped).

    Parameters
    ----------
    image : array-like, shape (H, W, 3)
    path : str or Path
    """
    Image.fromarray(to_uint8(_check_rgb(image))).save(Path(path), format="PNG")


def to_uint8(images):
    """Images in [0, 1] (clipped) as 0-255 uint8, rounded in float64: every writer of pixels uses it,
    so a snapshot and the final PNG of the same image are the same bytes."""
    return np.round(np.clip(np.asarray(images, dtype=np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def to_display(image):
    """The paper's display scaling: clip to the 2nd-98th percentile, then stretch to [0, 1].

    Percentiles are taken over all pixels and channels together, so colour balance is kept.
    An image with no contrast inside those percentiles is returned clipped to [0, 1].

    Parameters
    ----------
    image : array-like, shape (H, W, 3)

    Returns
    -------
    ndarray, shape (H, W, 3), float32 in [0, 1]
    """
    image = _check_rgb(image)
    low, high = np.percentile(image, DISPLAY_PERCENTILES)
    if high <= low:
        return np.clip(image, 0.0, 1.0).astype(np.float32)
    return ((np.clip(image, low, high) - low) / (high - low)).astype(np.float32)
