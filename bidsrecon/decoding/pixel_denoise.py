"""The decoded small image's luminance, cleared of what measurement noise alone would put there.

The pRF decoder's image (:mod:`bidsrecon.decoding.prf_energy`) departs from the prior mean
wherever the voxels' responses depart from theirs, and part of every departure is measurement
noise: on grey backgrounds it paints a mottled texture that no shape or letter has. Each pixel's
luminance is therefore passed through a local Wiener filter (after Lee 1980, "Digital image
enhancement and noise filtering by use of local statistics", IEEE Trans PAMI 2: 165-168, here
about the prior mean rather than the window's own mean): in a window of
:data:`WINDOW_PX` pixels around it, the mean square departure ``m`` is the signal's variance plus
the noise's, ``v``, which the linear decoder gives exactly for each item
(:meth:`bidsrecon.decoding.pixel_prf.PrfDecoder.noise_variance`); the departure is kept in the
share ``max(m − v, 0) / m`` that the signal accounts for. Where a window holds no more than noise
the image is the prior mean; where a shape's edge stands far above it, it is kept whole. No weight
is chosen: the noise comes from the model, the window from the measurement below.

Colour is left as decoded: filtering the red-green and blue-yellow channels too cost imagery 0.036
of its pixel identification (0.868 → 0.832, offline on the decoded 32-px images of the three seeds
below), and colour is most of what an imagined item's image has.

Measured by ``bench/validity.py`` (demo preset, seeds 0-2, the mean; at the prior scale the
evidence chooses, before :data:`bidsrecon.decoding.pixel_prf.PRIOR_SCALE_FACTOR`), without → with:
SSIM natural 0.310 → 0.319, shapes 0.481 → 0.611, letters 0.639 → 0.709, imagery 0.503 → 0.536;
pixel identification natural 0.984 → 0.983, shapes 0.949 → 0.949, letters 0.826 → 0.844, imagery
0.869 → 0.857; shape identification 0.775 → 0.775; EfficientNet-Lite0 0.589 → 0.560, 0.562 →
0.587, 0.507 → 0.511, 0.555 → 0.526. Windows of 5, 9 and 11 pixels scored within 0.005 SSIM of 7
(offline); 7 is the best of them. Imagery pays: on two seeds not used to choose anything (3, 4;
offline) its pixel identification fell from 0.890 to 0.833 and from 0.858 to 0.797.
"""
import numpy as np
from scipy.ndimage import uniform_filter

from bidsrecon.decoding.pixel_prf import from_channels, to_channels

#: Side of the square window of the local statistics, in pixels of a 32-px image (scaled, odd).
WINDOW_PX = 7


def suppress_noise(images, noise_variance, prior_mean):
    """Local Wiener filtering of each image's luminance, with the noise variance given.

    Parameters
    ----------
    images : ndarray, shape (n_items, 3, side, side)
        Decoded RGB images.
    noise_variance : ndarray, shape (n_items, 3, side * side)
        The variance measurement noise alone gives each channel value (only luminance is used).
    prior_mean : ndarray, shape (3 * side * side,)
        The channels the images depart from (the decoder's prior mean).

    Returns
    -------
    ndarray, shape (n_items, 3, side, side), float32 RGB
    """
    n_items, _, side, _ = images.shape
    window = int(round(WINDOW_PX * side / 32)) // 2 * 2 + 1
    prior_mean = np.asarray(prior_mean, dtype=np.float64).reshape(3, side, side)
    departure = to_channels(images).reshape(n_items, 3, side, side) - prior_mean
    luminance = departure[:, 0]
    local = uniform_filter(luminance ** 2, (0, window, window), mode="nearest")
    noise = uniform_filter(np.asarray(noise_variance, dtype=np.float64)[:, 0].reshape(n_items, side, side),
                           (0, window, window), mode="nearest")
    share = np.clip(local - noise, 0, None) / np.maximum(local, np.finfo(np.float64).tiny)
    departure[:, 0] = share * luminance
    return from_channels((departure + prior_mean).reshape(n_items, 3, -1), side).astype(np.float32)
