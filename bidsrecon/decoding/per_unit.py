"""The Kamitani lab's per-unit decoder: voxels chosen per unit, then a ridge per unit.

For every target unit the ``n_voxels`` voxels with the largest absolute Pearson correlation with
that unit on the training data are kept, and a ridge regression with a bias term (the bias is
penalised like the weights) is fitted on them (REFERENCE.md §1; the lab's implementation is the
``fastl2lir`` package, whose predictions this module reproduces). Voxels and features are
z-scored with the training mean and SD (ddof 1) first, as the lab does.

Each unit has its own voxels and so its own ``K × K`` system; what the units share is computed
once: the Gram matrix ``XᵀX`` of the z-scored voxels, bordered for the bias (each unit's system
is a sub-matrix of it), and, per chunk of units, ``XᵀY``, which is both the correlations that
rank the voxels (for z-scored columns ``r = XᵀY / (n − 1)``) and the right-hand sides. The
systems of a chunk are cut from the Gram matrix together, then factorised one by one.

Its cost grows with the number of units (one ``K × K`` solve and one pass over the samples per
unit), so it is meant for layer or unit subsets; :class:`~bidsrecon.decoding.KernelRidgeDecoder`
decodes every unit.
"""
import numpy as np
import scipy.linalg
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from bidsrecon.decoding.kernel_ridge import _as_finite_2d, _voxel_statistics
from bidsrecon.decoding.pixels import PIXEL_LAYER, pixel_statistics, pixel_targets
from bidsrecon.decoding.stream import iter_feature_batches
from bidsrecon.features.spread import channel_sd, spread_from_moments

#: Voxels kept per unit and ridge penalty: the lab's defaults (REFERENCE.md §1).
DEFAULT_N_VOXELS = 500
DEFAULT_ALPHA = 100.0


class PerUnitDecoder(BaseEstimator):
    """Ridge per unit on the voxels that correlate best with it (the lab's ``fastl2lir``).

    Parameters
    ----------
    n_voxels : int, default 500
        Voxels kept per unit, ranked by absolute Pearson correlation with the unit on the
        training data. When X has fewer voxels, every voxel is used (as ``fastl2lir`` does).
    alpha : float, default 100.0
        Ridge penalty on the z-scored data, applied to the weights and the bias alike.
    chunk_size : int, default 64
        Units handled together (one product with the samples, their systems cut from the Gram
        matrix at once); memory grows as ``chunk_size × (n_voxels + 1)² × 8`` bytes (130 MB at
        the defaults).

    Attributes
    ----------
    voxel_mean_, voxel_std_ : ndarray, shape (n_voxels_in,)
        Training mean and SD (ddof 1) of each voxel; constant voxels get SD 1.
    feature_mean_, feature_std_ : ndarray, shape (n_units,)
        Training mean and SD (ddof 1) of each unit; constant units get SD 1.
    selected_voxels_ : ndarray of int, shape (n_units, n_selected)
        Columns of X used for each unit, in increasing order.
    coef_ : ndarray, shape (n_units, n_selected)
        Weights of the selected voxels, in z-scored units, aligned with ``selected_voxels_``.
    intercept_ : ndarray, shape (n_units,)
        Bias of each unit, in z-scored units.
    """

    def __init__(self, n_voxels=DEFAULT_N_VOXELS, alpha=DEFAULT_ALPHA, chunk_size=64):
        self.n_voxels = n_voxels
        self.alpha = alpha
        self.chunk_size = chunk_size

    def fit(self, X, Y):
        """Select each unit's voxels and fit its ridge.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_voxels_in)
            Training samples (one per trial).
        Y : array-like, shape (n_samples, n_units)
            True features of the units to decode, one row per training sample.

        Returns
        -------
        self : PerUnitDecoder
        """
        X, Y = _check_training_data(X, Y)
        _check_positive_int(self.n_voxels, "n_voxels")
        _check_positive_int(self.chunk_size, "chunk_size")
        _check_alpha(self.alpha)

        self.voxel_mean_, self.voxel_std_ = _voxel_statistics(X)
        self.feature_mean_, self.feature_std_ = _voxel_statistics(Y)
        X = (X - self.voxel_mean_) / self.voxel_std_
        Y = (Y - self.feature_mean_) / self.feature_std_

        gram = training_gram(X)
        n_selected = min(self.n_voxels, X.shape[1])
        n_units = Y.shape[1]
        self.selected_voxels_ = np.empty((n_units, n_selected), dtype=np.intp)
        self.coef_ = np.empty((n_units, n_selected))
        self.intercept_ = np.empty(n_units)
        for start in range(0, n_units, self.chunk_size):
            stop = min(start + self.chunk_size, n_units)
            (self.selected_voxels_[start:stop], self.coef_[start:stop],
             self.intercept_[start:stop]) = fit_unit_chunk(
                X, Y[:, start:stop], gram, n_selected, self.alpha)
        return self

    def predict(self, X):
        """Decoded features of each sample.

        Parameters
        ----------
        X : array-like, shape (n_items, n_voxels_in)
            Test samples (averaged per item first, as the lab does); z-scored here with the
            training statistics.

        Returns
        -------
        ndarray, shape (n_items, n_units)
            In the features' original units (training mean and SD restored).
        """
        check_is_fitted(self, "coef_")
        X = _as_finite_2d(X, "X")
        if X.shape[1] != len(self.voxel_mean_):
            raise ValueError(f"X has {X.shape[1]} voxels; the decoder was fitted on "
                             f"{len(self.voxel_mean_)}.")
        X = (X - self.voxel_mean_) / self.voxel_std_
        n_units = len(self.coef_)
        predicted = np.empty((len(X), n_units))
        for start in range(0, n_units, self.chunk_size):
            units = slice(start, min(start + self.chunk_size, n_units))
            predicted[:, units] = predict_unit_chunk(X, self.selected_voxels_[units],
                                                     self.coef_[units], self.intercept_[units])
        return predicted * self.feature_std_ + self.feature_mean_


def training_gram(X):
    """What every unit's system is cut from: ``[X, 1]ᵀ[X, 1]``, as fastl2lir builds it.

    Parameters
    ----------
    X : ndarray, shape (n_samples, n_voxels)
        Z-scored training samples.

    Returns
    -------
    ndarray, shape (n_voxels + 1, n_voxels + 1)
        ``XᵀX`` bordered by the column sums of ``X`` (zero up to rounding for z-scored samples,
        kept so that the bias is exactly the lab's) and, in the corner, ``n_samples``.
    """
    n_samples, n_voxels = X.shape
    gram = np.empty((n_voxels + 1, n_voxels + 1))
    np.matmul(X.T, X, out=gram[:n_voxels, :n_voxels])
    gram[:n_voxels, n_voxels] = gram[n_voxels, :n_voxels] = X.sum(axis=0)
    gram[n_voxels, n_voxels] = n_samples
    return gram


def fit_unit_chunk(X, Y, gram, n_selected, alpha):
    """Voxel selection and ridge for a chunk of units.

    Parameters
    ----------
    X : ndarray, shape (n_samples, n_voxels)
        Z-scored training samples.
    Y : ndarray, shape (n_samples, n_units)
        Z-scored features of the chunk's units.
    gram : ndarray, shape (n_voxels + 1, n_voxels + 1)
        From :func:`training_gram`.
    n_selected : int
        Voxels kept per unit (at most ``n_voxels``).
    alpha : float
        Ridge penalty on weights and bias.

    Returns
    -------
    selected : ndarray of int, shape (n_units, n_selected)
        Selected voxels of each unit, in increasing order.
    coef : ndarray, shape (n_units, n_selected)
    intercept : ndarray, shape (n_units,)
    """
    n_voxels = X.shape[1]
    cross = (X.T @ Y).T  # (n_units, n_voxels): correlations × (n − 1), and right-hand sides
    if n_selected < n_voxels:
        selected = np.argpartition(-np.abs(cross), n_selected - 1, axis=1)[:, :n_selected]
        selected.sort(axis=1)
    else:
        selected = np.broadcast_to(np.arange(n_voxels), (len(cross), n_voxels)).copy()

    # Each unit's system over [its voxels, a column of ones]:
    # [[G_II + αI, s_I], [s_Iᵀ, n + α]] [w; b] = [Xᵀy_I; Σy].
    with_bias = np.hstack([selected, np.full((len(selected), 1), n_voxels)])
    systems = gram[with_bias[:, :, None], with_bias[:, None, :]]
    diagonal = np.arange(n_selected + 1)
    systems[:, diagonal, diagonal] += alpha
    right_hand_sides = np.hstack([np.take_along_axis(cross, selected, axis=1),
                                  Y.sum(axis=0)[:, None]])
    # The systems are symmetric positive definite (α > 0): a Cholesky factorisation each took
    # 1.3 ms of CPU per 500-voxel unit against 2.2 for numpy's batched LU solve and 3.6 for
    # torch's. One BLAS thread: on systems this small a second one brought nothing, and on a
    # loaded machine it made the loop 3-4 times slower (as fastl2lir also found and does).
    solution = np.empty((len(selected), n_selected + 1))
    with threadpool_limits(limits=1, user_api="blas"):
        for unit, (system, right_hand_side) in enumerate(zip(systems, right_hand_sides)):
            # A symmetric matrix is its own transpose, and the transpose is in the Fortran
            # order LAPACK factorises in place.
            factor = scipy.linalg.cho_factor(system.T, overwrite_a=True, check_finite=False)
            solution[unit] = scipy.linalg.cho_solve(factor, right_hand_side, check_finite=False)
    return selected, solution[:, :n_selected], solution[:, n_selected]


def predict_unit_chunk(X, selected, coef, intercept):
    """Predictions of a chunk of units, each from its own voxels.

    Parameters
    ----------
    X : ndarray, shape (n_items, n_voxels)
        Z-scored test samples.
    selected : ndarray of int, shape (n_units, n_selected)
    coef : ndarray, shape (n_units, n_selected)
    intercept : ndarray, shape (n_units,)

    Returns
    -------
    ndarray, shape (n_items, n_units)
        In z-scored feature units.
    """
    # X[:, selected] is (n_items, n_units, n_selected): memory grows with the chunk, not the layer.
    return np.einsum("iuk,uk->iu", X[:, selected], coef) + intercept


def _check_training_data(X, Y):
    X = _as_finite_2d(X, "X")
    Y = _as_finite_2d(Y, "Y")
    if len(X) != len(Y):
        raise ValueError(f"X has {len(X)} samples but Y has {len(Y)} rows; they must match "
                         "(the features of each training sample).")
    if len(X) < 2:
        raise ValueError(f"At least 2 training samples are needed to z-score; got {len(X)}.")
    return X, Y


def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")


def _check_alpha(alpha):
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)) \
            or not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a positive finite number; got {alpha!r}.")


def decode_per_unit(encoder, images, layers, train_samples, image_index, item_samples, counts, cache,
                    feature_files=None):
    """The lab's per-unit mode: every unit of ``layers`` decoded by its own ridge on its own voxels.

    All training features of the layers are held in memory (and each unit fitted on its own),
    so this mode is meant for layer subsets; the kernel ridge decoder streams every unit.

    Returns
    -------
    decoded, train_mean, train_spread : as :func:`bidsrecon.decoding.decode_features`
    feature_std : dict of str to ndarray, each channel's SD within an image, averaged over images
    decoders : dict of str to PerUnitDecoder
    """
    batches = [features for _, features in iter_feature_batches(encoder, images, layers, progress=True, cache=cache,
                                                                feature_files=feature_files)]
    weights = counts / counts.sum()
    decoded, train_mean, train_spread, feature_std, decoders = {}, {}, {}, {}, {}
    for layer in layers:
        features = np.concatenate([batch[layer] for batch in batches])
        shape = features.shape[1:]
        feature_std[layer] = weights @ channel_sd(features, ddof=1)
        features = features.reshape(len(features), -1)
        mean, mean_square = weights @ features, weights @ features.astype(np.float64) ** 2
        train_mean[layer] = mean.reshape(shape).astype(np.float32)
        train_spread[layer] = spread_from_moments(mean.reshape(shape), mean_square.reshape(shape))
        decoders[layer] = PerUnitDecoder().fit(train_samples, features[image_index])
        decoded[layer] = decoders[layer].predict(item_samples).reshape((-1,) + shape).astype(np.float32)
    # The pixels pseudo-layer, each value by its own ridge too (bidsrecon.decoding.pixels).
    pixels = pixel_targets(images, images.shape[1])
    decoders[PIXEL_LAYER] = PerUnitDecoder().fit(train_samples, pixels.reshape(len(pixels), -1)[image_index])
    decoded[PIXEL_LAYER] = decoders[PIXEL_LAYER].predict(item_samples).reshape((-1,) + pixels.shape[1:])
    train_mean[PIXEL_LAYER], train_spread[PIXEL_LAYER] = pixel_statistics(pixels, counts)
    return decoded, train_mean, train_spread, feature_std, decoders
