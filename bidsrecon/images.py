"""Reading stimulus images and writing reconstructions.

Images live in memory as float32 arrays of shape (H, W, 3), RGB in [0, 1].

Every stimulus is opened through :func:`read_rgb`, which turns any mode Pillow reads into 8-bit RGB
the way a viewer would show it (Pillow's own ``convert("RGB")`` clips 16-bit grey to white and drops
transparency onto black). The pre-flight stage (:mod:`bidsrecon.preflight`) calls it on every
stimulus before any preprocessing, so a file that would fail here fails in seconds, not hours.
"""
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_INPUT_MISSING, BidsReconError

#: Percentiles the paper's figures clip to before stretching (REFERENCE.md §1, "Display").
DISPLAY_PERCENTILES = (2, 98)

#: What transparent parts of a stimulus are shown over: the mid-grey background of ds001506's shapes
#: and letters (and of the simulated ones, whose ``GREY`` is this), i.e. the screen the
#: participant saw around an image.
BACKGROUND = (128, 128, 128)

#: The largest stimulus accepted, in pixels (8192 x 8192; 192 MiB as 8-bit RGB). Stimuli are shown
#: and encoded at a few hundred pixels; a larger file is a mistake or a decompression bomb (a small
#: file that decodes to gigabytes). Pillow's own guard only warns below 2 x 89 M pixels.
MAX_IMAGE_PIXELS = 8192 * 8192

#: Pillow's modes for 16-bit greyscale (PNG, TIFF): 0-65535 is scaled to 0-255, not clipped.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_SIXTEEN_BIT_MAX = 65535
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def _check_size(size):
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"Expected the image size as a positive integer, got {size!r}.")


def read_rgb(path):
    """Open an image file, decode all of it and convert it to 8-bit RGB (:func:`to_rgb`).

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    PIL.Image.Image
        Mode ``"RGB"``, fully loaded (the file is closed).

    Raises
    ------
    BidsReconError
        Exit 66 when the file is missing, is not an image Pillow reads, or is truncated or corrupt;
        exit 64 when it has more than :data:`MAX_IMAGE_PIXELS` pixels or values of unknown range.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # Pillow warns (and stops only at twice its limit) about huge images: ours is an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                _check_pixels(path, image.size)
                image.load()  # decodes every pixel: a truncated file fails here, not later
                return to_rgb(image, path)
    except FileNotFoundError as error:
        raise BidsReconError(f"Image not found: {path}", EXIT_INPUT_MISSING) from error
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise BidsReconError(f"{path}: too large to be a stimulus ({error}); the limit is {_limit()}. "
                             "Resize the image", EXIT_BAD_ARGUMENTS) from None
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError, struct.error) as error:
        # Pillow reports broken files as any of these (SyntaxError: a corrupt PNG chunk).
        raise BidsReconError(f"Cannot read image {path}: {error}; replace it with a readable PNG or JPEG",
                             EXIT_INPUT_MISSING) from error


def to_rgb(image, path="image"):
    """Any image Pillow reads as 8-bit RGB, as a viewer shows it.

    - 16-bit greyscale (``I;16``, ``I;16B``, ...): 0-65535 scaled to 0-255 (65535 -> 255,
      32768 -> 128), where Pillow's conversion clips every value above 255 to white;
    - 32-bit integers (``I``): taken as 16-bit data when every value lies in 0-65535 (Pillow
      reads 16-bit files as ``I`` in some versions and formats); other values have no declared
      range and are refused;
    - 32-bit floats (``F``): taken as 0-1 (the float convention) and scaled by 255; values
      outside 0-1 have no declared range and are refused;
    - transparency (``RGBA``, ``LA``, ``PA``, a palette or grey/RGB PNG with a transparent colour):
      composited over :data:`BACKGROUND`, where Pillow drops the alpha (transparent turns black
      or whatever colour the hidden pixels hold);
    - everything else (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX``):
      Pillow's conversion.

    Parameters
    ----------
    image : PIL.Image.Image
    path : str or Path
        Named in errors.

    Returns
    -------
    PIL.Image.Image
        Mode ``"RGB"``.

    Raises
    ------
    BidsReconError
        Exit 64 for ``I``/``F`` values outside their assumed range, or a mode Pillow cannot convert.
    """
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return _grey_to_rgb(np.asarray(image), mode, path)
    if mode in _ALPHA_MODES or "transparency" in image.info:
        try:
            rgba = image.convert("RGBA")
        except ValueError as error:
            raise BidsReconError(f"{path}: cannot convert its mode {mode} to RGB ({error}); "
                                 "save it as 8-bit RGB", EXIT_BAD_ARGUMENTS) from None
        return Image.alpha_composite(Image.new("RGBA", rgba.size, BACKGROUND + (255,)), rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise BidsReconError(f"{path}: cannot convert its mode {mode} to RGB ({error}); "
                             "save it as 8-bit RGB", EXIT_BAD_ARGUMENTS) from None


def _grey_to_rgb(values, mode, path):
    """16-bit, 32-bit integer or float grey values as 8-bit RGB, scaled from their range to 0-255."""
    values = values.astype(np.float64)
    if mode == "F":
        low, high, top = 0.0, 1.0, 1.0
    else:
        low, high, top = 0, _SIXTEEN_BIT_MAX, _SIXTEEN_BIT_MAX
    finite = np.isfinite(values).all()
    if not finite or (values.size and (values.min() < low or values.max() > high)):
        kind = "32-bit float image (read as 0-1)" if mode == "F" else "32-bit integer image (read as 16-bit, 0-65535)"
        found = "non-finite values" if not finite else f"values {values.min():g} to {values.max():g}"
        raise BidsReconError(f"{path}: a {kind} holds {found}, so its grey levels are unknown; "
                             "save it as an 8- or 16-bit image", EXIT_BAD_ARGUMENTS)
    grey = np.round(values * (255.0 / top)).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def _check_pixels(path, size):
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise BidsReconError(f"{path}: {width} x {height} pixels is too large to be a stimulus (the limit is "
                             f"{_limit()}; a larger file is a mistake or a decompression bomb). Resize the image",
                             EXIT_BAD_ARGUMENTS)


def _limit():
    return f"{MAX_IMAGE_PIXELS:,} pixels, e.g. 8192 x 8192"


def _square_centre(image):
    """The largest centred square of a Pillow image."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def load_image(path, size, dtype=np.float32):
    """Read an image as RGB (:func:`read_rgb`), crop its centre to a square and resize it.

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
    square = _square_centre(read_rgb(path))
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


def resize_images(images, size):
    """Resize square images already in memory (antialiased, Lanczos, as :func:`load_image`).

    Parameters
    ----------
    images : ndarray, shape (n_images, side, side, 3), uint8
    size : int

    Returns
    -------
    ndarray, shape (n_images, size, size, 3), uint8
    """
    _check_size(size)
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"expected uint8 images of shape (n, side, side, 3); got {images.dtype} {images.shape}")
    resized = np.empty((len(images), size, size, 3), np.uint8)
    for index, image in enumerate(images):
        resized[index] = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS))
    return resized


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
