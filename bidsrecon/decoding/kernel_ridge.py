"""Kernel ridge decoding with one penalty per layer, never building a weight matrix.

With one ridge penalty shared by all units of a layer, the prediction of ridge regression with an
intercept is linear in the training targets (DESIGN.md, "The decoding core")::

    ŷ(x) = ȳ + k(x, X) (K + αI)⁻¹ (Y − ȳ),      K = X W Xᵀ over centred, z-scored voxels.

``W`` is diagonal: each voxel's weight in the kernel, with repeated training images its
reliability (:func:`bidsrecon.decoding.voxel_selection.reliability_weights`, which says why and
what it measured); without enough repeats, or with ``voxel_weights="none"``, every voxel's is 1.

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
10-100 times too strong for averaged test data); the folds and scores are
:mod:`bidsrecon.decoding.cross_validation`'s.

The linear algebra runs as tasks of :mod:`bidsrecon.parallel` (rows of the kernel, folds,
layers, alphas), each with BLAS and LAPACK on one thread: a multithreaded BLAS or LAPACK
call rounds differently with another thread count, and the decoder must be the same bits
whatever ``--nprocs``.
"""
import warnings

import numpy as np
import scipy.linalg
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from bidsrecon.decoding.cross_validation import (
    _image_indicator,
    _scores_for_trial_counts,
    _smoother_scores,
    grouped_folds,
    out_of_fold_smoothers,
)
from bidsrecon.decoding.voxel_selection import reliability_weights
from bidsrecon.parallel import fixed_blocks, in_task_threads, map_tasks

#: Default alpha grid, relative to the kernel's scale (the mean of diag(K), i.e. about the
#: number of voxels for z-scored data), so one grid suits any voxel count.
DEFAULT_RELATIVE_ALPHAS = np.logspace(-3, 4, 15)
RELIABILITY = "reliability"
#: What ``voxel_weights`` may be.
VOXEL_WEIGHTS = (RELIABILITY, "none")
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
    voxel_weights : {"reliability", "none"}, default "reliability"
        Each voxel's weight in the kernel: its reliability over repeated training images (the
        module docstring) or one for every voxel.

    Attributes
    ----------
    voxel_mean_, voxel_std_ : ndarray, shape (n_voxels,)
        Training mean and SD (ddof 1) of each voxel; constant voxels get SD 1.
    voxel_weight_ : ndarray, shape (n_voxels,), or None
        Each voxel's weight in the kernel, mean 1; None when every voxel weighs the same.
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

    def __init__(self, alphas=None, n_folds=5, random_state=0, voxel_weights=RELIABILITY):
        self.alphas = alphas
        self.n_folds = n_folds
        self.random_state = random_state
        self.voxel_weights = voxel_weights

    @in_task_threads
    def fit(self, X, image_index, cv_targets, test_trials=None, cv_images=None):
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
        cv_images : array-like of int, optional
            The training images ``cv_targets``' rows belong to, ascending, when the penalty is
            chosen on a subset of them: the cross-validation then runs on those images' samples
            only (the kernel's rows and columns of their samples, z-scored with every sample's
            statistics), while the decoder keeps every sample. Default: every image, in order.

        Returns
        -------
        self : KernelRidgeDecoder
        """
        X, image_index, cv_targets, n_images, cv_images = _check_training_data(X, image_index, cv_targets, cv_images)
        relative_alphas = _check_alphas(self.alphas)
        _check_n_folds(self.n_folds)
        if self.voxel_weights not in VOXEL_WEIGHTS:
            raise ValueError(f"voxel_weights must be one of {VOXEL_WEIGHTS}; got {self.voxel_weights!r}.")

        self.voxel_mean_, self.voxel_std_ = _voxel_statistics(X)
        self.X_ = (X - self.voxel_mean_) / self.voxel_std_
        self.voxel_weight_ = reliability_weights(X, image_index) if self.voxel_weights == RELIABILITY else None
        self.image_index_ = image_index
        self.n_images_ = n_images
        self.inversions_ = {}  # layers also decoded by an inversion, set after fitting (decoding/stage.py)

        kernel = linear_kernel(self.X_, weights=self.voxel_weight_)
        kernel_scale = np.mean(np.diag(kernel))
        if kernel_scale == 0:
            raise ValueError("Every voxel of X is constant over the training samples; "
                             "nothing can be decoded from it.")
        self.alphas_ = relative_alphas * kernel_scale

        self.trial_counts_ = _check_test_trials(test_trials)
        counts = self.trial_counts_
        cv_kernel, cv_index, n_cv_images = _cross_validation_part(kernel, image_index, n_images, cv_images)
        folds = grouped_folds(cv_index, self.n_folds, self.random_state)
        if counts is None:
            smoothers = out_of_fold_smoothers(cv_kernel, cv_index, n_cv_images, folds, self.alphas_)
        else:
            smoothers, noise = out_of_fold_smoothers(cv_kernel, cv_index, n_cv_images, folds, self.alphas_,
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
        weights = getattr(self, "voxel_weight_", None)  # absent from decoders saved before it existed
        test_kernel = linear_kernel((X_test - self.voxel_mean_) / self.voxel_std_, self.X_, weights=weights)
        kernel = linear_kernel(self.X_, weights=weights)

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
        # A layer also decoded by inverting an encoding model (bidsrecon.decoding.pixel_inversion)
        # takes that share of its coefficients from it: decoded values are affine in them.
        for layer, (inversion, share) in getattr(self, "inversions_", {}).items():
            trials = np.ones(len(X_test)) if test_trials is None else np.asarray(test_trials).ravel()
            inverted = inversion.coefficients((X_test - self.voxel_mean_) / self.voxel_std_, trials)
            coefficients[layer] = (1.0 - share) * coefficients[layer] + share * inverted
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


def linear_kernel(X, Y=None, weights=None):
    """``X diag(weights) Yᵀ`` by blocks of :data:`KERNEL_ROWS` rows of ``X``, one task each
    (:mod:`bidsrecon.parallel`): one BLAS call over the whole product would split its sums by
    the thread count. Only a block of ``X`` is ever weighted, never a copy of the whole.

    Without ``Y``, ``X diag(weights) Xᵀ``: each block computes its rows up to the diagonal, and
    the upper triangle mirrors the lower one, so the kernel is exactly symmetric (as BLAS's syrk
    makes it). Without ``weights``, every column weighs 1.

    Returns
    -------
    ndarray, shape (len(X), len(Y))
    """
    symmetric = Y is None
    Y = X if symmetric else Y
    kernel = np.empty((len(X), len(Y)), dtype=np.result_type(X, Y))

    def fill(rows):
        block_rows = X[rows] if weights is None else X[rows] * weights
        if not symmetric:
            kernel[rows] = block_rows @ Y.T
            return
        block = block_rows @ X[:rows.stop].T
        diagonal = block[:, rows]
        block[:, rows] = np.tril(diagonal) + np.tril(diagonal, -1).T
        kernel[rows, :rows.stop] = block

    blocks = fixed_blocks(len(X), KERNEL_ROWS)
    map_tasks(fill, blocks)
    if symmetric:
        for rows in blocks:
            kernel[rows, rows.stop:] = kernel[rows.stop:, rows].T
    return kernel


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


def _cross_validation_part(kernel, image_index, n_images, cv_images):
    """The kernel, image index and image count the cross-validation runs on: all of them, or the
    samples of the ``cv_images`` only, their images renumbered ``0 … len(cv_images) − 1``."""
    if cv_images is None:
        return kernel, image_index, n_images
    position = np.full(n_images, -1)
    position[cv_images] = np.arange(len(cv_images))
    in_cv = position[image_index] >= 0
    return kernel[np.ix_(in_cv, in_cv)], position[image_index[in_cv]], len(cv_images)


def _check_training_data(X, image_index, cv_targets, cv_images=None):
    """Check fit's inputs once; return them as float64/int arrays plus n_images and cv_images."""
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
    n_targets = next(iter(n_rows.values()))
    if len(set(n_rows.values())) != 1:
        raise ValueError(f"Every layer of cv_targets must have one row per training image; "
                         f"got rows {n_rows}.")
    if cv_images is None:
        n_images = n_targets
        if image_index.min() < 0 or image_index.max() >= n_images:
            raise ValueError(f"image_index must lie in [0, {n_images}) (cv_targets has {n_images} "
                             f"rows); got values from {image_index.min()} to {image_index.max()}.")
        return X, image_index.astype(np.intp), cv_targets, n_images, None
    if image_index.min() < 0:
        raise ValueError("image_index must hold non-negative image numbers.")
    n_images = int(image_index.max()) + 1
    cv_images = np.asarray(cv_images)
    if (cv_images.ndim != 1 or len(cv_images) != n_targets or not np.issubdtype(cv_images.dtype, np.integer)
            or np.any(np.diff(cv_images) <= 0) or cv_images[0] < 0 or cv_images[-1] >= n_images):
        raise ValueError(f"cv_images must be {n_targets} ascending image numbers in [0, {n_images}), one per "
                         f"row of cv_targets; got {cv_images!r}.")
    return X, image_index.astype(np.intp), cv_targets, n_images, cv_images.astype(np.intp)


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
