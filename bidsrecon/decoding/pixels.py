"""The ``pixels`` pseudo-layer: a small image decoded with the same kernel decoder as the features.

The deep layers carry what an image is, the early ones its local texture; neither pins down where
its edges are as directly as its pixels do. A ridge from voxels to a small image (Miyawaki et al.
2008; the linear baseline every reconstruction must beat) recovers layout and luminance well, so
the decoder decodes it too, as one more target: the training images averaged down to
``PIXEL_SIZE`` pixels a side, RGB in [0, 1] (3,072 values, nothing next to 14.9 M VGG19 units).
It is decoded as two parts, each fitted, cross-validated and applied exactly as a network layer
is (:class:`bidsrecon.decoding.KernelRidgeDecoder`, alpha per trial count): the luminance (BT.601
luma) and the colour (red and blue minus luma). Each part gets its own alpha: colour is decoded
less well than luminance, and a colour part decoded with luminance's penalty is mostly noise
(black letters came out in noisy colours). The RGB image is put back together from the two. The
reconstruction uses it as its start image and as a pixel term of its loss
(:mod:`bidsrecon.recon.loss`).

Downsampling is area averaging (``adaptive_avg_pool2d``), the same operator the reconstruction
applies to its image, so the decoded target and the image are compared like for like.
"""
import numpy as np
import torch

from bidsrecon.evaluation.metrics import BT601_LUMA
from bidsrecon.features.spread import spread_from_moments

#: Name of the pseudo-layer in decoded features, decoders and settings.
PIXEL_LAYER = "pixels"
#: Side of the decoded image in pixels (smaller reconstructions use their own size).
PIXEL_SIZE = 32
#: The parts decoded, each with its own alpha: luminance (1 channel) and colour (2 channels).
PIXEL_PARTS = ("pixels_luminance", "pixels_colour")
_LUMA = np.array(BT601_LUMA, dtype=np.float32)


def pixel_size(image_size):
    """Side of the decoded pixel image for reconstructions of ``image_size`` pixels."""
    return min(PIXEL_SIZE, int(image_size))


def downsample(images, size):
    """Area-average images to ``size`` x ``size``.

    Parameters
    ----------
    images : ndarray (n, H, W, 3) in [0, 1] or uint8 0-255, or torch.Tensor (n, 3, H, W)
    size : int

    Returns
    -------
    Same kind as the input: ndarray (n, 3, size, size) float32 in [0, 1], or a tensor.
    """
    if isinstance(images, torch.Tensor):
        return torch.nn.functional.adaptive_avg_pool2d(images, size)
    images = np.asarray(images)
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32) / np.float32(scale)).permute(0, 3, 1, 2)
    return torch.nn.functional.adaptive_avg_pool2d(tensor, size).numpy()


def pixel_targets(images, image_size):
    """The pseudo-layer's true values for ``images`` (as the decoder's training targets).

    Returns
    -------
    ndarray, shape (n_images, 3, s, s), float32, s = :func:`pixel_size`
    """
    return downsample(images, pixel_size(image_size)).astype(np.float32)


def pixel_parts(pixels):
    """Luminance and colour parts of RGB pixel images (:data:`PIXEL_PARTS`).

    Parameters
    ----------
    pixels : ndarray, shape (n, 3, s, s)

    Returns
    -------
    dict: ``pixels_luminance`` (n, 1, s, s), the luma; ``pixels_colour`` (n, 2, s, s), red and
    blue minus the luma.
    """
    pixels = np.asarray(pixels, dtype=np.float32)
    luma = np.einsum("c,nchw->nhw", _LUMA, pixels)[:, None]
    return {PIXEL_PARTS[0]: luma, PIXEL_PARTS[1]: pixels[:, [0, 2]] - luma}


def pixels_from_parts(parts):
    """RGB pixel images from their :func:`pixel_parts` (the exact inverse)."""
    luma, colour = parts[PIXEL_PARTS[0]][:, 0], parts[PIXEL_PARTS[1]]
    red, blue = luma + colour[:, 0], luma + colour[:, 1]
    green = (luma - _LUMA[0] * red - _LUMA[2] * blue) / _LUMA[1]
    return np.stack([red, green, blue], axis=1).astype(np.float32)


def decode_pixel_parts(coefficients, targets, counts):
    """Decoded RGB pixel images from each part's coefficients, with the RGB training mean and spread.

    Parameters
    ----------
    coefficients : dict of str to ndarray, shape (n_items, n_images)
        ``A_u`` of each of :data:`PIXEL_PARTS`.
    targets : ndarray, shape (n_images, 3, s, s)
        :func:`pixel_targets` of the unique training images.
    counts : array-like of int, shape (n_images,)

    Returns
    -------
    decoded, train_mean, train_spread : as :func:`decode_pixels`, for the RGB images
    """
    parts = pixel_parts(targets)
    decoded = pixels_from_parts({part: decode_pixels(coefficients[part], parts[part], counts)[0]
                                 for part in PIXEL_PARTS})
    return (decoded, *pixel_statistics(targets, counts))


def pixel_statistics(targets, counts):
    """Trial-count-weighted mean and spread (:func:`spread_from_moments`) of training pixel images.

    Returns
    -------
    train_mean : ndarray, shape (3, s, s) float32
    train_spread : float
    """
    flat = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
    weights = np.asarray(counts, dtype=np.float64) / np.sum(counts)
    mean, shape = weights @ flat, targets.shape[1:]
    spread = spread_from_moments(mean.reshape(shape), (weights @ flat**2).reshape(shape))
    return mean.reshape(shape).astype(np.float32), spread


def decode_pixels(coefficients, targets, counts):
    """Decoded pixel images, their training mean and spread, as :func:`decode_features` gives a layer's.

    Parameters
    ----------
    coefficients : ndarray, shape (n_items, n_images)
        ``A_u`` of the pixel layer (:meth:`KernelRidgeDecoder.coefficients`).
    targets : ndarray, shape (n_images, 3, s, s)
        :func:`pixel_targets` of the unique training images, in the coefficients' order.
    counts : array-like of int, shape (n_images,)
        Training trials of each image (weights of the training mean).

    Returns
    -------
    decoded : ndarray, shape (n_items, 3, s, s) float32
    train_mean : ndarray, shape (3, s, s) float32
    train_spread : float
    """
    coefficients = np.asarray(coefficients, dtype=np.float64)
    flat = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
    train_mean, train_spread = pixel_statistics(targets, counts)
    mean = train_mean.reshape(-1).astype(np.float64)
    decoded = coefficients @ flat + (1.0 - coefficients.sum(axis=1, keepdims=True)) * mean
    return decoded.reshape((-1,) + targets.shape[1:]).astype(np.float32), train_mean, train_spread
