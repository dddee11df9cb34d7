"""Kernel ridge decoding with one penalty per layer, never building a weight matrix.

With one ridge penalty shared by all units of a layer, the prediction of ridge regression with an
intercept is linear in the training targets (DESIGN.md, "The decoding core")::

    ŷ(x) = ȳ + k(x, X) (K + αI)⁻¹ (Y − ȳ),      K = X Xᵀ over centred, z-scored voxels.

Training samples are trials and each trial shows one of ``n_images`` training images, so the
coefficients over samples collapse onto unique images,
``A_u[:, j] = Σ_{s: image_index[s]=j} A[:, s]``, and the decoded features are
``ŷ = A_u F + (1 − Σ_j A_u[:, j]) ȳ`` with ``F`` the features of the unique training images and
``ȳ`` their trial-count-weighted mean. (For a kernel centred on the training mean the row sums
of ``A_u`` vanish; the general form costs nothing.) The decoder for a layer is therefore an
``(n_items, n_images)`` matrix; the weighted sum over ``F`` is done by streaming the training
images through the encoder (:func:`bidsrecon.decoding.stream.decode_features`).

Alpha is chosen per layer by grouped K-fold cross-validation on a sample of units: all trials of
an image fall in the same fold, and the held-out trials of an image are averaged before
prediction, the way test data is used (REFERENCE.md §8: alpha chosen on single trials came out
10-100 times too strong for averaged test data).

The linear algebra runs as tasks of :mod:`bidsrecon.parallel` (rows of the kernel, folds,
layers, alphas), each with BLAS and LAPACK on one thread: a multithreaded BLAS or LAPACK
call rounds differently with another thread count, and the decoder must be the same bits
whatever ``--nprocs``.
"""
import dataclasses
import warnings

import numpy as np
import scipy.linalg
from scipy import sparse
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from bidsrecon.errors import EXIT_INPUT_MISSING, BidsReconError
from bidsrecon.features.correlation import profile_correlation
from bidsrecon.parallel import fixed_blocks, in_task_threads, map_tasks

#: Default alpha grid, relative to the kernel's scale (the mean of diag(K), i.e. about the
#: number of voxels for z-scored data), so one grid suits any voxel count.
DEFAULT_RELATIVE_ALPHAS = np.logspace(-3, 4, 15)
#: Rows of the kernel computed by one task (:func:`linear_kernel`).
KERNEL_ROWS = 256


class KernelRidgeDecoder(BaseEstimator):
    """Kernel ridge decoder of network features from fMRI samples, one alpha per layer.

    Parameters
    ----------
    alphas : array-like of float, optional
        Grid of ridge penalties, *relative* to the mean of the kernel's diagonal (about the number
        of voxels after z-scoring). Defaults to :data:`DEFAULT_RELATIVE_ALPHAS`, 10⁻³ … 10⁴.
    n_folds : int, default 5
        Number of cross-validation folds over training images.
    random_state : int or None, default 0
        Seed of the assignment of images to folds.

    Attributes
    ----------
    voxel_mean_, voxel_std_ : ndarray, shape (n_voxels,)
        Training mean and SD (ddof 1) of each voxel; constant voxels get SD 1.
    X_ : ndarray, shape (n_samples, n_voxels)
        Z-scored training samples.
    image_index_ : ndarray of int, shape (n_samples,)
        Training image shown in each sample.
    n_images_ : int
        Number of unique training images (columns of the coefficients).
    alphas_ : ndarray, shape (n_alphas,)
        Absolute alpha grid searched.
    cv_scores_ : dict of str to ndarray, shape (n_alphas,)
        Cross-validated profile correlation of each layer's sampled units at each alpha (per
        unit across a fold's held-out images, averaged over units, then over folds), for
        predictions from averages of the largest of ``trial_counts_`` when that is set.
    trial_counts_ : tuple of int or None
        The distinct trial counts of ``fit``'s ``test_trials``, ascending, or None.
    alpha_by_trials_, cv_scores_by_trials_ : dict of str to dict of int to float / ndarray
        With ``test_trials``, per layer, the alpha chosen and the scores for each count (``alpha_``
        and ``cv_scores_`` are then those of the largest count); None without.
    alpha_ : dict of str to float
        Absolute alpha chosen for each layer.

    Notes
    -----
    Voxels are z-scored once with the statistics of all training samples; inside each fold the
    kernel is re-centred on that fold's training mean (an intercept fitted per fold) but not
    re-scaled.
    """

    def __init__(self, alphas=None, n_folds=5, random_state=0):
        self.alphas = alphas
        self.n_folds = n_folds
        self.random_state = random_state

    @in_task_threads
    def fit(self, X, image_index, cv_targets, test_trials=None):
        """Z-score the voxels and choose each layer's alpha by grouped cross-validation.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_voxels)
            Training samples (one per trial).
        image_index : array-like of int, shape (n_samples,)
            Training image of each sample, in ``[0, n_images)``.
        cv_targets : dict of str to array-like, shape (n_images, n_units_sampled)
            True features of a random sample of each layer's units, one row per training image.
        test_trials : array-like of int, optional
            Trials averaged into each test item. Given, an alpha is chosen for each distinct
            count, scored for predictions from averages of that many trials rather than of the
            held-out images' own trials (see :func:`_scores_for_trial_counts`), and
            :meth:`coefficients` uses each item's.

        Returns
        -------
        self : KernelRidgeDecoder
        """
        X, image_index, cv_targets, n_images = _check_training_data(X, image_index, cv_targets)
        relative_alphas = _check_alphas(self.alphas)
        _check_n_folds(self.n_folds)
        folds = grouped_folds(image_index, self.n_folds, self.random_state)

        self.voxel_mean_, self.voxel_std_ = _voxel_statistics(X)
        self.X_ = (X - self.voxel_mean_) / self.voxel_std_
        self.image_index_ = image_index
        self.n_images_ = n_images

        kernel = linear_kernel(self.X_)
        kernel_scale = np.mean(np.diag(kernel))
        if kernel_scale == 0:
            raise ValueError("Every voxel of X is constant over the training samples; "
                             "nothing can be decoded from it.")
        self.alphas_ = relative_alphas * kernel_scale

        self.trial_counts_ = _check_test_trials(test_trials)
        counts = self.trial_counts_
        if counts is None:
            smoothers = out_of_fold_smoothers(kernel, image_index, n_images, folds, self.alphas_)
        else:
            smoothers, noise = out_of_fold_smoothers(kernel, image_index, n_images, folds, self.alphas_,
                                                     with_noise=True)
        self.cv_scores_, self.alpha_ = {}, {}
        self.cv_scores_by_trials_, self.alpha_by_trials_ = ({}, {}) if counts is not None else (None, None)

        def layer_scores(targets):
            if counts is None:
                return _smoother_scores(smoothers, targets, folds)
            return _scores_for_trial_counts(smoothers, noise, targets, folds, counts)

        # One task per layer; the warnings of _best_alpha come from this thread, in layer order.
        all_scores = map_tasks(layer_scores, cv_targets.values())
        for (layer, targets), scores in zip(cv_targets.items(), all_scores):
            if np.all(np.isnan(scores)):
                raise ValueError(f"cv_targets[{layer!r}]: no sampled unit varies across the "
                                 "training images, so no alpha can be scored.")
            if counts is None:
                self.cv_scores_[layer], self.alpha_[layer] = scores, self._best_alpha(layer, scores)
                continue
            self.cv_scores_by_trials_[layer] = dict(zip(counts, scores))
            self.alpha_by_trials_[layer] = {
                count: self._best_alpha(f"{layer} (items of {count} trial{'s' if count > 1 else ''})", row)
                for count, row in zip(counts, scores)}
            # The headline alpha and scores: the items with the most trials'.
            self.cv_scores_[layer], self.alpha_[layer] = scores[-1], self.alpha_by_trials_[layer][counts[-1]]
        return self

    def _best_alpha(self, name, scores):
        best = int(np.nanargmax(scores))
        _warn_if_on_grid_edge(name, best, len(scores))
        return float(self.alphas_[best])

    @in_task_threads
    def coefficients(self, X_test, test_trials=None):
        """Coefficients over unique training images for each layer.

        Parameters
        ----------
        X_test : array-like, shape (n_items, n_voxels)
            Test samples, already averaged per item; z-scored here with the training statistics.
        test_trials : array-like of int, shape (n_items,), optional
            Trials averaged into each item. When alphas were chosen per trial count (``fit``'s
            ``test_trials``), each item gets the alpha of the fitted count nearest its own in
            noise level (1/count); otherwise, and without this, every item gets ``alpha_``.

        Returns
        -------
        dict of str to ndarray, shape (n_items, n_images)
            ``A_u`` per layer, float64: decoded features are ``A_u F + (1 − A_u.sum(1)) ȳ``.
        """
        check_is_fitted(self, "alpha_")
        X_test = _as_finite_2d(X_test, "X_test")
        if X_test.shape[1] != self.X_.shape[1]:
            raise ValueError(f"X_test has {X_test.shape[1]} voxels; the decoder was fitted on "
                             f"{self.X_.shape[1]}.")
        item_alphas = self.item_alphas(len(X_test), test_trials)
        test_kernel = linear_kernel((X_test - self.voxel_mean_) / self.voxel_std_, self.X_)
        kernel = linear_kernel(self.X_)

        def collapsed(alpha):
            regularised = kernel + alpha * np.eye(len(kernel))
            sample_coefficients = scipy.linalg.solve(regularised, test_kernel.T,
                                                     assume_a="pos").T
            return collapse_onto_images(sample_coefficients, self.image_index_, self.n_images_)

        alphas = np.unique(np.concatenate(list(item_alphas.values())))
        collapsed_by_alpha = dict(zip(alphas, map_tasks(collapsed, alphas)))
        coefficients = {}
        for layer, alphas in item_alphas.items():
            coefficients[layer] = np.empty((len(X_test), self.n_images_))
            for alpha in np.unique(alphas):
                coefficients[layer][alphas == alpha] = collapsed_by_alpha[alpha][alphas == alpha]
        return coefficients

    def item_alphas(self, n_items, test_trials=None):
        """Per layer, the alpha each of ``n_items`` test items is decoded with (see
        :meth:`coefficients`); ndarray of shape (n_items,) per layer."""
        check_is_fitted(self, "alpha_")
        by_trials = getattr(self, "alpha_by_trials_", None)
        if test_trials is None or not by_trials:
            return {layer: np.full(n_items, alpha) for layer, alpha in self.alpha_.items()}
        test_trials = np.asarray(test_trials).ravel()
        if len(test_trials) != n_items or np.any(test_trials < 1):
            raise ValueError(f"test_trials must give a count >= 1 for each of the {n_items} items; "
                             f"got {test_trials!r}.")
        alphas = {}
        for layer, by_count in by_trials.items():
            counts = np.array(sorted(by_count))
            nearest = counts[np.abs(1.0 / counts[None, :] - 1.0 / test_trials[:, None]).argmin(axis=1)]
            alphas[layer] = np.array([by_count[count] for count in nearest])
        return alphas


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


def collapse_onto_images(sample_coefficients, image_index, n_images):
    """Sum coefficients over the samples of each image.

    Parameters
    ----------
    sample_coefficients : ndarray, shape (n_items, n_samples)
    image_index : ndarray of int, shape (n_samples,)
    n_images : int

    Returns
    -------
    ndarray, shape (n_items, n_images)
    """
    return np.asarray(sample_coefficients @ _image_indicator(image_index, n_images))


def linear_kernel(X, Y=None):
    """``X Yᵀ`` by blocks of :data:`KERNEL_ROWS` rows of ``X``, one task each
    (:mod:`bidsrecon.parallel`): one BLAS call over the whole product would split its sums by
    the thread count.

    Without ``Y``, ``X Xᵀ``: each block computes its rows up to the diagonal, and the upper
    triangle mirrors the lower one, so the kernel is exactly symmetric (as BLAS's syrk makes it).

    Returns
    -------
    ndarray, shape (len(X), len(Y))
    """
    symmetric = Y is None
    Y = X if symmetric else Y
    kernel = np.empty((len(X), len(Y)), dtype=np.result_type(X, Y))

    def fill(rows):
        if not symmetric:
            kernel[rows] = X[rows] @ Y.T
            return
        block = X[rows] @ X[:rows.stop].T
        diagonal = block[:, rows]
        block[:, rows] = np.tril(diagonal) + np.tril(diagonal, -1).T
        kernel[rows, :rows.stop] = block

    blocks = fixed_blocks(len(X), KERNEL_ROWS)
    map_tasks(fill, blocks)
    if symmetric:
        for rows in blocks:
            kernel[rows, rows.stop:] = kernel[rows.stop:, rows].T
    return kernel


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


def _image_indicator(image_index, n_images):
    """Sparse one-hot matrix (n_samples, n_images): sample s shows image image_index[s]."""
    n_samples = len(image_index)
    return sparse.csr_matrix((np.ones(n_samples), (np.arange(n_samples), image_index)),
                             shape=(n_samples, n_images))


def _voxel_statistics(X):
    """Training mean and SD (ddof 1) per voxel; constant voxels get SD 1 (they become 0)."""
    std = X.std(axis=0, ddof=1)
    std[std == 0] = 1.0
    return X.mean(axis=0), std


def _warn_if_on_grid_edge(layer, best, n_alphas):
    if n_alphas > 1 and best in (0, n_alphas - 1):
        end = "smallest" if best == 0 else "largest"
        warnings.warn(f"Layer {layer!r}: cross-validation chose the {end} alpha of the grid; "
                      "the best penalty may lie outside it (pass a wider `alphas`).",
                      stacklevel=3)


def _as_finite_2d(array, name):
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D; got shape {array.shape}.")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds NaN or infinite values.")
    return array


def _check_training_data(X, image_index, cv_targets):
    """Check fit's inputs once; return them as float64/int arrays plus n_images."""
    X = _as_finite_2d(X, "X")
    image_index = np.asarray(image_index)
    if image_index.ndim != 1 or not np.issubdtype(image_index.dtype, np.integer):
        raise ValueError("image_index must be a 1-D array of integers; got dtype "
                         f"{image_index.dtype} and shape {image_index.shape}.")
    if len(image_index) != len(X):
        raise ValueError(f"X has {len(X)} samples but image_index has {len(image_index)} "
                         "entries; they must match (one image per sample).")
    if not isinstance(cv_targets, dict) or not cv_targets:
        raise ValueError("cv_targets must be a non-empty dict of layer name to an array "
                         "(n_images, n_units_sampled).")
    cv_targets = {layer: _as_finite_2d(targets, f"cv_targets[{layer!r}]")
                  for layer, targets in cv_targets.items()}
    n_rows = {layer: len(targets) for layer, targets in cv_targets.items()}
    n_images = next(iter(n_rows.values()))
    if len(set(n_rows.values())) != 1:
        raise ValueError(f"Every layer of cv_targets must have one row per training image; "
                         f"got rows {n_rows}.")
    if image_index.min() < 0 or image_index.max() >= n_images:
        raise ValueError(f"image_index must lie in [0, {n_images}) (cv_targets has {n_images} "
                         f"rows); got values from {image_index.min()} to {image_index.max()}.")
    return X, image_index.astype(np.intp), cv_targets, n_images


def _check_alphas(alphas):
    if alphas is None:
        return DEFAULT_RELATIVE_ALPHAS.copy()
    alphas = np.asarray(alphas, dtype=np.float64)
    if alphas.ndim != 1 or len(alphas) == 0 or not np.all(np.isfinite(alphas)) \
            or np.any(alphas <= 0):
        raise ValueError(f"alphas must be a non-empty 1-D sequence of positive numbers; "
                         f"got {alphas!r}.")
    return alphas


def _check_test_trials(test_trials):
    """The distinct trial counts of the test items, ascending, or None."""
    if test_trials is None:
        return None
    test_trials = np.asarray(test_trials).ravel()
    if (not len(test_trials) or not np.issubdtype(test_trials.dtype, np.integer)
            or np.any(test_trials < 1)):
        raise ValueError(f"test_trials must be integer counts >= 1, one per test item; got {test_trials!r}.")
    return tuple(int(count) for count in np.unique(test_trials))


def _check_n_folds(n_folds):
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2; got {n_folds!r}.")
