"""Grouped cross-validation of the kernel ridge decoder: folds, out-of-fold predictions, scores.

:class:`~bidsrecon.decoding.kernel_ridge.KernelRidgeDecoder` chooses each layer's alpha with
these. :func:`grouped_folds` puts all trials of an image in the same fold;
:func:`out_of_fold_smoothers` gives, per alpha, the matrix that maps the training images'
features to each held-out image's prediction from its fold's training samples (its held-out
trials averaged, the way test data is used), so that every layer is scored with one matrix
product per alpha; :func:`_smoother_scores` and :func:`_scores_for_trial_counts` score them
(profile correlation within each fold), the latter for predictions from averages of a given
number of trials.
"""
import dataclasses
import warnings

import numpy as np
from scipy import sparse

from bidsrecon.errors import EXIT_INPUT_MISSING, BidsReconError
from bidsrecon.features.correlation import profile_correlation
from bidsrecon.parallel import map_tasks


def grouped_folds(image_index, n_folds, random_state=0):
    """Split the images that have samples into folds; all trials of an image share a fold.

    Parameters
    ----------
    image_index : ndarray of int, shape (n_samples,)
    n_folds : int
    random_state : int or None

    Returns
    -------
    list of ndarray of int
        Held-out images of each fold (sizes differ by at most one).

    Raises
    ------
    BidsReconError
        When fewer than two images per fold have samples.
    """
    shown_images = np.unique(image_index)
    if len(shown_images) < 2 * n_folds:
        raise BidsReconError(
            f"The training data show {len(shown_images)} unique images, fewer than two for "
            f"each of the {n_folds} cross-validation folds that choose the ridge penalty (each "
            "fold holds out whole images and correlates across them). Add training runs or "
            "use fewer folds.", EXIT_INPUT_MISSING)
    shuffled = np.random.default_rng(random_state).permutation(shown_images)
    return [np.sort(fold) for fold in np.array_split(shuffled, n_folds)]


def out_of_fold_smoothers(kernel, image_index, n_images, folds, alphas, with_noise=False):
    """Matrices that map training-image features to out-of-fold predictions, one per alpha.

    For held-out image ``v`` of a fold, the prediction from that fold's training samples is
    ``M[v] @ F`` with ``M[v] = A_u[v] + (1 − Σ_j A_u[v, j]) w``, where ``A_u`` are the fold's
    collapsed coefficients for ``v``'s trials averaged, and ``w`` the weights of the fold's
    training mean (trial counts / number of training samples). ``M`` does not depend on the
    layer, so each layer is scored with one matrix product per alpha.

    Parameters
    ----------
    kernel : ndarray, shape (n_samples, n_samples)
        Linear kernel of the z-scored training samples.
    image_index : ndarray of int, shape (n_samples,)
    n_images : int
    folds : list of ndarray of int
        Held-out images of each fold (from :func:`grouped_folds`).
    alphas : ndarray, shape (n_alphas,)
        Absolute penalties.
    with_noise : bool, default False
        Also return the noise of the predictions (see Returns).

    Returns
    -------
    ndarray, shape (n_alphas, n_images, n_images)
        Rows of images that are never held out (no samples) stay zero.
    PredictionNoise
        Only ``with_noise``: rows ``N[v]`` such that ``N[v] @ F`` is the difference between
        the predictions from the two halves of image ``v``'s trials, scaled to the variance of
        one trial's prediction noise (zero rows for images with one trial), and each image's
        trial count.
    """
    smoothers = np.zeros((len(alphas), n_images, n_images))
    noise_rows = np.zeros_like(smoothers) if with_noise else None

    # One task per fold (bidsrecon.parallel); folds hold out different images, so each task
    # writes its own rows.
    def fill_fold(held_out_images):
        held_out = np.isin(image_index, held_out_images)
        train = ~held_out
        # Rows of held-out samples combined: each image's trials averaged, then (with_noise)
        # the difference of each image's two halves of trials.
        row_weights = _averaging_weights(image_index, n_images, held_out, held_out_images)
        n_rows = len(held_out_images)
        if with_noise:
            row_weights = np.vstack([row_weights, _half_difference_weights(image_index, held_out, held_out_images)])
        train_kernel, held_out_kernel = _centred_fold_kernels(kernel, train, held_out, row_weights)
        # One eigendecomposition per fold makes every alpha a cheap diagonal rescaling.
        eigenvalues, eigenvectors = np.linalg.eigh(train_kernel)
        eigenvalues = np.clip(eigenvalues, 0, None)
        held_out_in_eigenbasis = held_out_kernel @ eigenvectors  # (n_rows, n_train)
        train_indicator = _image_indicator(image_index[train], n_images)
        # (n_train, n_images): eigenvector coordinates summed over each image's trials.
        eigenbasis_to_images = np.asarray((train_indicator.T @ eigenvectors).T)
        train_mean_weights = np.bincount(image_index[train], minlength=n_images) / train.sum()
        for alpha_position, alpha in enumerate(alphas):
            collapsed = (held_out_in_eigenbasis / (eigenvalues + alpha)) @ eigenbasis_to_images
            # The training mean's share: 1 − Σ A_u for a prediction, − Σ A_u for a difference.
            mean_share = -collapsed.sum(axis=1)
            mean_share[:n_rows] += 1.0
            rows = collapsed + mean_share[:, None] * train_mean_weights[None, :]
            smoothers[alpha_position, held_out_images] = rows[:n_rows]
            if with_noise:
                noise_rows[alpha_position, held_out_images] = rows[n_rows:]

    map_tasks(fill_fold, folds)
    if not with_noise:
        return smoothers
    return smoothers, PredictionNoise(noise_rows, np.bincount(image_index, minlength=n_images))


@dataclasses.dataclass
class PredictionNoise:
    """Out-of-fold prediction noise: see :func:`out_of_fold_smoothers`."""

    rows: np.ndarray
    trials: np.ndarray


def _averaging_weights(image_index, n_images, held_out, held_out_images):
    """(n_held_out_images, n_held_out_samples): each held-out image's trials averaged.

    Held-out trials of an image are averaged (a linear kernel's rows average like the samples
    do) because test items are averaged over their repeats before decoding.
    """
    indicator = _image_indicator(image_index[held_out], n_images)[:, held_out_images].toarray().T
    return indicator / indicator.sum(axis=1, keepdims=True)


def _half_difference_weights(image_index, held_out, held_out_images):
    """(n_held_out_images, n_held_out_samples): per image, the mean of its first ⌊r/2⌋ trials
    minus the mean of the rest, divided by √(1/a + 1/b), a and b the halves' sizes.

    The prediction from such a row is pure trial-to-trial noise with the variance of one trial's
    prediction noise: the signal and the training mean cancel. Zero for one-trial images.
    """
    weights = np.zeros((len(held_out_images), int(held_out.sum())))
    for row, image in enumerate(held_out_images):
        columns = np.flatnonzero(image_index[held_out] == image)
        if len(columns) < 2:
            continue
        first, rest = columns[:len(columns) // 2], columns[len(columns) // 2:]
        scale = 1.0 / np.sqrt(1.0 / len(first) + 1.0 / len(rest))
        weights[row, first] = scale / len(first)
        weights[row, rest] = -scale / len(rest)
    return weights


def _centred_fold_kernels(kernel, train, held_out, row_weights):
    """A fold's training kernel and the kernel rows of ``row_weights @ X_held_out``, centred on
    the fold's training mean (for a row whose weights sum to s, its x̄ part is s·x̄_T)."""
    train_kernel = kernel[np.ix_(train, train)]
    held_out_kernel = row_weights @ kernel[np.ix_(held_out, train)]
    # x·x̄_T for every training sample, and x̄_T·x̄_T: centring a linear kernel on the fold mean.
    train_row_means = train_kernel.mean(axis=1)
    grand_mean = train_row_means.mean()
    train_kernel = (train_kernel - train_row_means[:, None] - train_row_means[None, :]
                    + grand_mean)
    weight_sums = row_weights.sum(axis=1, keepdims=True)
    held_out_kernel = (held_out_kernel - weight_sums * train_row_means[None, :]
                       - held_out_kernel.mean(axis=1, keepdims=True) + weight_sums * grand_mean)
    return train_kernel, held_out_kernel


def _smoother_scores(smoothers, targets, folds):
    """Profile correlation of out-of-fold predictions at each alpha, averaged over units and folds.

    Correlations are taken within each fold: pooled across folds, the fold-to-fold shifts of the
    training mean (which move against the held-out images) would bias the score against large
    alphas. Units that are constant in a fold are skipped there.

    Returns
    -------
    ndarray, shape (n_alphas,)
    """
    fold_scores = np.full((len(smoothers), len(folds)), np.nan)
    for fold_position, held_out_images in enumerate(folds):
        # Centring on one constant per unit leaves correlations unchanged and keeps the
        # products well conditioned for features with a large mean.
        centred = targets - targets[held_out_images].mean(axis=0)
        for alpha_position, smoother in enumerate(smoothers):
            predicted = smoother[held_out_images] @ centred
            correlations = profile_correlation(predicted, centred[held_out_images])
            if not np.all(np.isnan(correlations)):
                fold_scores[alpha_position, fold_position] = np.nanmean(correlations)
    scores = np.full(len(smoothers), np.nan)
    scored = ~np.all(np.isnan(fold_scores), axis=1)
    scores[scored] = np.nanmean(fold_scores[scored], axis=1)
    return scores


def _scores_for_trial_counts(smoothers, noise, targets, folds, trial_counts):
    """Cross-validated profile correlation of predictions from averages of ``count`` trials.

    Held-out images have fewer trials than test items (ds001506: 5 against 12-24): scored on
    their own averages, alpha would suit noisier data than the test items are, and come out too
    strong. Per unit, the covariance of prediction and truth does not depend on the trial noise;
    the prediction's variance does: its noise part, σ² · mean(1/r) for the held-out images, is
    replaced by σ²/count, with σ² (one trial's prediction noise) estimated from the difference
    of the predictions of each image's two halves of trials. Moments are taken about each
    fold's means (see :func:`_smoother_scores`) and summed over folds before the ratio: a
    ratio of one fold's noisy variances is biased upwards.

    Returns
    -------
    ndarray, shape (n_counts, n_alphas)
    """
    n_alphas, n_units = len(smoothers), targets.shape[1]
    covariance, variance, truth, held_out_noise, trial_noise = (
        np.zeros((n_alphas, n_units)) for _ in range(5))
    for held_out_images in folds:
        n_images = len(held_out_images)
        centred = targets - targets[held_out_images].mean(axis=0)
        true = centred[held_out_images]
        split = held_out_images[noise.trials[held_out_images] >= 2]
        for alpha_position, smoother in enumerate(smoothers):
            predicted = smoother[held_out_images] @ centred
            predicted -= predicted.mean(axis=0)
            covariance[alpha_position] += (predicted * true).sum(axis=0)
            variance[alpha_position] += (predicted**2).sum(axis=0)
            truth[alpha_position] += (true**2).sum(axis=0)
            if len(split):
                # σ² per unit; about the fold's mean, the noise adds (1 − 1/n) σ²/r per image.
                sigma2 = np.mean((noise.rows[alpha_position, split] @ centred) ** 2, axis=0)
                held_out_noise[alpha_position] += sigma2 * (1 - 1 / n_images) * np.sum(
                    1.0 / noise.trials[held_out_images])
                trial_noise[alpha_position] += sigma2 * (n_images - 1)
    # The noise cannot exceed the whole variance (σ² is itself estimated).
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(held_out_noise > variance, variance / held_out_noise, 1.0)
    scores = np.empty((len(trial_counts), n_alphas))
    for position, count in enumerate(trial_counts):
        corrected = variance + share * (trial_noise / count - held_out_noise)
        with np.errstate(invalid="ignore", divide="ignore"):
            correlations = covariance / np.sqrt(corrected * truth)
        correlations[~((corrected > 0) & (truth > 0))] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a layer with no varying unit
            scores[position] = np.nanmean(correlations, axis=1)
    return scores


def image_means(samples, image_index, n_images):
    """Mean of each image's samples, (n_images, n_columns) float64; an image without samples gets zeros."""
    indicator = _image_indicator(image_index, n_images)
    counts = np.asarray(indicator.sum(axis=0)).ravel()
    return np.asarray(indicator.T @ np.asarray(samples, dtype=np.float64)) / np.maximum(counts, 1)[:, None]


def _image_indicator(image_index, n_images):
    """Sparse one-hot matrix (n_samples, n_images): sample s shows image image_index[s]."""
    n_samples = len(image_index)
    return sparse.csr_matrix((np.ones(n_samples), (np.arange(n_samples), image_index)),
                             shape=(n_samples, n_images))
