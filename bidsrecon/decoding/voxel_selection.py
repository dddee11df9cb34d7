"""``--n-voxels K``: keep the K voxels that respond most reliably to the training images.

The functions take the training samples and which training image each one shows, and
nothing else, so that no test sample can take part in the choice (issue 3: no test data may
leak into any choice). Call them with the training rows only.

How voxels are ranked
---------------------
With repeated presentations of training images (ds001506: every image five times) the score
is the one-way ANOVA F ratio of each voxel's samples grouped by image: the variance of the
image means (between images) over the variance of the samples around their image's mean
(within images, i.e. trial-to-trial noise). It measures how well a voxel tells training images
apart relative to its noise, which is what a decoder can use. For equal repeat counts it
ranks voxels exactly as the intraclass correlation ICC(1) does, the reliability of the
responses across repeats, while using every repeat instead of a split into halves, and it
needs no network features, so one selection serves every layer.

Without enough repeats the noise cannot be told apart from the image effect. The score is
then each voxel's variance across the training samples: the samples are block averages of
runs z-scored per voxel, and averaging over a block shrinks fast measurement noise while the
slow, haemodynamically smoothed evoked response survives, so voxels with more stimulus-driven
signal have more variable samples.
"""
import warnings

import numpy as np
from scipy import sparse

from bidsrecon.errors import EXIT_BAD_ARGUMENTS, BidsReconError

# Within-image degrees of freedom the F ratio needs: with fewer, each voxel's noise variance
# rests on so few repeats (its relative SD is about sqrt(2 / df): 32 % at 20) that the ranking
# follows the noise estimate rather than the signal.
MIN_WITHIN_DF = 20
F_RATIO, VARIANCE = "f_ratio", "variance"
# Voxels scored at a time: float64 copies of a few thousand columns, not of the whole matrix
# (ds001506 whole-brain training samples are 6,000 x ~10^5 float32, gigabytes already).
CHUNK_VOXELS = 4096


def _check(train_samples, train_image_index):
    samples = np.asanyarray(train_samples)
    labels = np.asarray(train_image_index)
    if samples.ndim != 2:
        raise ValueError(f"train_samples must be 2-D (n_samples, n_voxels); got shape {samples.shape}")
    if labels.shape != (samples.shape[0],):
        raise ValueError(f"train_image_index must hold one label per sample ({samples.shape[0]}); "
                         f"got shape {labels.shape}")
    if samples.shape[0] < 2:
        raise ValueError(f"need at least 2 training samples to rank voxels; got {samples.shape[0]}")
    return samples, np.unique(labels, return_inverse=True)[1]


def selection_method(train_image_index):
    """Which score :func:`voxel_scores` uses for these training labels.

    Parameters
    ----------
    train_image_index : array-like, shape (n_samples,)
        The training image of each sample (any labels).

    Returns
    -------
    str
        ``"f_ratio"`` when the repeats give at least :data:`MIN_WITHIN_DF` within-image degrees
        of freedom (and there are at least two images), else ``"variance"``.
    """
    labels = np.asarray(train_image_index)
    n_images = len(np.unique(labels))
    within_df = len(labels) - n_images
    return F_RATIO if n_images >= 2 and within_df >= MIN_WITHIN_DF else VARIANCE


def _f_ratio(samples, image, counts):
    n_images = len(counts)
    # Sums per image as a sparse (images x samples) indicator product: np.add.at is ten times slower.
    indicator = sparse.csr_matrix((np.ones(len(image)), (image, np.arange(len(image)))),
                                  shape=(n_images, len(image)))
    image_means = (indicator @ samples) / counts[:, None]
    between = (counts[:, None] * (image_means - samples.mean(axis=0)) ** 2).sum(axis=0) / (n_images - 1)
    residuals = samples - image_means[image]
    within = np.einsum("ij,ij->j", residuals, residuals) / (len(samples) - n_images)
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = between / within
    # A voxel without noise but with an image effect is as reliable as can be; one without either is useless.
    return np.where(within > 0, scores, np.where(between > 0, np.inf, -np.inf))


def voxel_scores(train_samples, train_image_index):
    """Score every voxel on the training samples (higher is better; see the module docstring).

    Parameters
    ----------
    train_samples : array-like, shape (n_samples, n_voxels)
        Training samples only.
    train_image_index : array-like, shape (n_samples,)
        The training image of each sample (any labels).

    Returns
    -------
    scores : ndarray, shape (n_voxels,)
        Constant voxels score ``-inf``.
    method : str
        ``"f_ratio"`` or ``"variance"`` (:func:`selection_method`).

    Raises
    ------
    ValueError
        For mismatched shapes, fewer than two samples, or non-finite samples.
    """
    samples, image = _check(train_samples, train_image_index)
    method = selection_method(image)
    counts = np.bincount(image).astype(np.float64)
    scores = np.empty(samples.shape[1])
    for start in range(0, samples.shape[1], CHUNK_VOXELS):
        chunk = np.asarray(samples[:, start:start + CHUNK_VOXELS], dtype=np.float64)
        if not np.isfinite(chunk).all():
            raise ValueError("train_samples hold NaN or infinite values; drop those voxels first")
        if method == F_RATIO:
            scores[start:start + CHUNK_VOXELS] = _f_ratio(chunk, image, counts)
        else:
            variance = chunk.var(axis=0, ddof=1)
            scores[start:start + CHUNK_VOXELS] = np.where(variance > 0, variance, -np.inf)
    return scores, method


def reliability_weights(train_samples, train_image_index):
    """Each voxel's weight in the kernel decoder: its F ratio minus 1, floored at 0, scaled to mean 1.

    ``F − 1`` estimates the ratio of the voxel's image-driven variance to its trial-to-trial noise.
    A kernel ridge on voxels weighted so (:mod:`bidsrecon.decoding.kernel_ridge`, ``K = X W Xᵀ``)
    is a ridge whose prior gives reliable voxels the larger weights: the kernel's counterpart of
    the lab's per-unit choice of the voxels that correlate best with the unit (Shen et al. 2019
    keep 500 per unit), since a voxel that tells no training image from another adds only noise
    to every image's kernel row. ``bench/decoder_agreement.py`` (demo preset, seed 0, 2,304
    voxels): the natural test set's profile correlation on ``stem`` rose from 0.470 to 0.496 (the
    per-unit mode's is 0.499) and on the other layers by 0.005-0.010; imagery's fell by
    0.005-0.010 (imagery drives weakly the early areas, the most reliable in perception). Keeping
    the best 500, 1,000 or 2,000 voxels by ``F`` instead (``--n-voxels``) gave ``stem`` 0.491,
    0.492 and 0.475.

    Parameters
    ----------
    train_samples : array-like, shape (n_samples, n_voxels)
        Training samples only.
    train_image_index : array-like, shape (n_samples,)

    Returns
    -------
    ndarray, shape (n_voxels,), or None
        None when the training images are not repeated enough to tell a voxel's noise from its
        signal (:func:`selection_method`), and (with a warning) when no voxel is more reliable
        than noise.
    """
    scores, method = voxel_scores(train_samples, train_image_index)
    if method != F_RATIO:
        return None
    weights = np.clip(scores - 1.0, 0.0, None)  # constant voxels score -inf: weight 0
    # A voxel with an image effect and no trial-to-trial noise (F infinite) weighs as much as the most
    # reliable noisy one (or 1 when every voxel is so).
    finite = weights[np.isfinite(weights)]
    weights[np.isinf(weights)] = finite.max() if finite.size and finite.max() > 0 else 1.0
    if not weights.any():
        warnings.warn("No voxel responds to the training images more reliably than noise (every "
                      "F ratio <= 1); all voxels weigh the same in the decoder.", stacklevel=3)
        return None
    return weights / weights.mean()


def select_voxels(train_samples, train_image_index, n_voxels):
    """Columns of the ``n_voxels`` best voxels, chosen on the training samples only.

    Parameters
    ----------
    train_samples : array-like, shape (n_samples, n_voxels_in_mask)
        Training samples only; test samples must not be passed.
    train_image_index : array-like, shape (n_samples,)
        The training image of each sample (any labels).
    n_voxels : int
        How many to keep (``--n-voxels``).

    Returns
    -------
    ndarray of int, shape (n_voxels,)
        Column indices in increasing order (the mask's voxel order is kept); ties are broken
        by the lower index.

    Raises
    ------
    BidsReconError
        Exit 64 when ``n_voxels`` is not a whole number from 1 to the number of voxels.
    """
    scores, _ = voxel_scores(train_samples, train_image_index)
    if isinstance(n_voxels, bool) or not isinstance(n_voxels, (int, np.integer)) or not 1 <= n_voxels <= len(scores):
        raise BidsReconError(
            f"--n-voxels {n_voxels!r}: expected a whole number from 1 to the {len(scores)} voxels of the mask",
            EXIT_BAD_ARGUMENTS)
    best = np.argsort(-scores, kind="stable")[:n_voxels]
    return np.sort(best)
