"""The small image's luminance decoded by inverting a voxel encoding model (inverse retinotopy).

A ridge from voxels to pixels (the kernel decoder's ``pixels`` pseudo-layer) learns one map for
every pixel from the training images alone, so its penalty is chosen for what natural images
share: it keeps little of a letter's strokes. Going the other way is better posed. Each voxel's
response is fitted as a ridge regression on the training images' pixels (one penalty per voxel,
chosen by cross-validation over images), which is what a voxel is: a weighted pool of part of the
visual field. A test sample is then explained by the image whose predicted responses match it,
each voxel weighted by its residual precision, under a Gaussian prior around the training mean
whose precision is ``lambda g P``, ``P = I + kappa L / 8`` with ``L`` the pixel grid's graph
Laplacian (neighbouring pixels alike) (Thirion et al. 2006, "Inverse retinotopy", NeuroImage 33: 1104-1116;
Naselaris et al. 2009, Neuron 63: 902-915)::

    x̂ = ȳ + (A W Aᵀ + λ g P)⁻¹ A W (z − z̄)

with ``A`` the fitted encoding weights of the voxels kept (cross-validated R² above a
threshold), ``W`` their residual precisions (single training trials' residual variance divided
by the trials the sample averages) and ``g`` the mean eigenvalue of ``P⁻¹ A W Aᵀ`` over the pixels.
``lambda`` is chosen for each sample on its own, as the one under which the sample is most
likely (the marginal likelihood of a linear-Gaussian model, MacKay 1992): an item that drives
the voxels weakly, or unlike the training images, is shrunk more towards the training mean,
which is what letters on a grey background need (their pixel variance is a fraction of a natural
photograph's). The threshold and ``kappa`` are chosen by a cross-validation over training images
that scores pairwise identification of the held-out images' decoded pixels (each fold fits its own
encoding model; the smoothest ``kappa`` within one standard error of the best); no test sample
steers them.

Every ``x̂`` lies in the span of the centred training images, so it is written as coefficients
over them, the form of the kernel decoder's coefficients
(:meth:`bidsrecon.decoding.KernelRidgeDecoder.coefficients`), and what is kept to apply it to new
samples (saved with the decoder) is the fitted model in the basis that makes ``A W Aᵀ`` diagonal and
``P`` the identity, where each sample's ``lambda`` costs a division.
"""
import itertools
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from bidsrecon.decoding.cross_validation import image_means
from bidsrecon.evaluation.identification import pairwise_identification
from bidsrecon.parallel import in_task_threads, map_tasks

#: Per-voxel encoding penalties, relative to the mean squared singular value of the pixels.
ENCODING_ALPHAS = np.logspace(-2, 4, 13)
#: Cross-validated R² a voxel's encoding model must exceed to be kept.
THRESHOLDS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
#: Smoothness of the prior: its precision is ``I + kappa L / 8``, ``L`` the graph Laplacian of the
#: pixel grid (eigenvalues up to 8), so that neighbouring pixels are expected alike.
SMOOTHNESS = (0.0, 10.0, 100.0, 1000.0)
#: Strengths of the prior a sample's lambda is chosen from, relative to ``g``.
PRIOR_WEIGHTS = np.logspace(-1.5, 3, 28)
N_FOLDS = 5
#: ``--pixel-decoder``: the share of the luminance's coefficients the inversion gives (the rest is
#: the kernel ridge's).
PIXEL_DECODER_SHARES = {"ridge": 0.0, "inversion": 1.0, "both": 0.5}


@dataclass(frozen=True)
class PixelInversion:
    """A fitted inversion, in the basis ``Q`` where one trial's precision ``A W Aᵀ`` is ``diag(h)``
    and the prior's ``P`` is ``I`` (``A W Aᵀ Q = P Q diag(h)``, ``Qᵀ P Q = I``).

    Attributes
    ----------
    projection : ndarray, shape (rank, n_voxels)
        ``Qᵀ A W`` for one trial (zero on the voxels not kept).
    eigenvalues : ndarray, shape (rank,)
        ``h``, for one trial.
    back : ndarray, shape (n_images, rank)
        From the eigenbasis to coefficients over the training images, times ``contrast``.
    voxel_mean : ndarray, shape (n_voxels,)
        The z-scored samples' training mean the model is centred on.
    prior_scale : float
        ``g``.
    threshold, smoothness : float
        The cross-validated R² threshold and prior smoothness chosen.
    contrast : float
        The held-out images' least-squares scale of their decoded deviations from the mean,
        applied to every decoded image (see :func:`fit_pixel_inversion`).
    cv_scores : ndarray, shape (len(THRESHOLDS), len(SMOOTHNESS))
        Held-out pairwise identification with each pair.
    """

    projection: np.ndarray
    eigenvalues: np.ndarray
    back: np.ndarray
    voxel_mean: np.ndarray
    prior_scale: float
    threshold: float
    smoothness: float
    contrast: float
    cv_scores: np.ndarray

    def coefficients(self, z, n_trials):
        """Coefficients over the training images, each sample with its own lambda.

        Parameters
        ----------
        z : ndarray, shape (n, n_voxels)
            Z-scored samples (the training statistics'), each the mean of ``n_trials`` trials.
        n_trials : array-like of int, shape (n,)

        Returns
        -------
        ndarray, shape (n, n_images)
        """
        return _posterior(self.projection, self.eigenvalues, self.prior_scale,
                          np.asarray(z, dtype=np.float64) - self.voxel_mean, n_trials) @ self.back.T

    def arrays(self):
        """The arrays to save (:func:`from_arrays` reads them back)."""
        return {"projection": self.projection, "eigenvalues": self.eigenvalues, "back": self.back,
                "voxel_mean": self.voxel_mean, "prior_scale": np.array([self.prior_scale]),
                "threshold": np.array([self.threshold]), "smoothness": np.array([self.smoothness]),
                "contrast": np.array([self.contrast]), "cv_scores": np.asarray(self.cv_scores, dtype=np.float64)}


def from_arrays(arrays):
    """A :class:`PixelInversion` from its :meth:`PixelInversion.arrays`."""
    return PixelInversion(arrays["projection"], arrays["eigenvalues"], arrays["back"], arrays["voxel_mean"],
                          float(arrays["prior_scale"][0]), float(arrays["threshold"][0]),
                          float(arrays["smoothness"][0]), float(arrays["contrast"][0]), arrays["cv_scores"])


@in_task_threads
def fit_pixel_inversion(z, image_index, targets, counts, seed=0):
    """Fit the encoding model and choose its voxels and prior smoothness by cross-validation.

    Parameters
    ----------
    z : ndarray, shape (n_samples, n_voxels)
        Z-scored training samples, one per trial (the kernel decoder's ``X_``).
    image_index : ndarray of int, shape (n_samples,)
    targets : ndarray, shape (n_images, side, side)
        The training images' pixel values (the luminance part of the pseudo-layer).
    counts : ndarray of int, shape (n_images,)
        Trials of each image: the weights of the training mean, as the decoded pixels use it.
    seed : int
        Of the folds over images.

    Returns
    -------
    PixelInversion
    """
    z = np.asarray(z, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    laplacian = _grid_laplacian(targets.shape[-1])
    targets = targets.reshape(len(counts), -1)
    means = image_means(z, image_index, len(counts))
    folds = np.random.default_rng([seed, len(counts)]).permutation(len(counts)) % N_FOLDS

    def fold_scores(fold):
        """Held-out identification, and the two sums of the held-out least-squares contrast."""
        fitted = _fit(z, image_index, targets, means, counts, np.flatnonzero(folds != fold), seed)
        held = np.flatnonzero(folds == fold)
        scores = np.empty((3, len(THRESHOLDS), len(SMOOTHNESS)))
        for (i, threshold), (j, smoothness) in itertools.product(enumerate(THRESHOLDS), enumerate(SMOOTHNESS)):
            projection, eigenvalues, prior_scale, rotation = _eigenbasis(fitted, laplacian, threshold, smoothness)
            coordinates = _posterior(projection, eigenvalues, prior_scale, means[held] - fitted["voxel_mean"],
                                     counts[held])
            deviation = (coordinates @ rotation.T) @ fitted["vt"]
            scores[0, i, j] = np.nanmean(pairwise_identification(fitted["pixel_mean"] + deviation, targets[held]))
            truth = targets[held] - fitted["pixel_mean"]
            scores[1:, i, j] = np.sum(deviation * truth), np.sum(deviation * deviation)
        return scores

    folds_out = np.stack(map_tasks(fold_scores, range(N_FOLDS)))
    fold_table = folds_out[:, 0]
    cv_scores = fold_table.mean(axis=0)
    i, j = _smoothest_within_one_error(fold_table)
    # The posterior mean comes out bolder than the images (noise in the fitted encoding weights
    # reads as signal): its deviations from the mean are scaled by the least-squares factor of the
    # held-out images (0.4-0.5 on the validity bench's subjects), which identification ignores.
    product, energy = folds_out[:, 1:, i, j].sum(axis=0)
    contrast = float(product / energy) if energy > 0 and product > 0 else 1.0
    fitted = _fit(z, image_index, targets, means, counts, np.arange(len(counts)), seed)
    projection, eigenvalues, prior_scale, rotation = _eigenbasis(fitted, laplacian, THRESHOLDS[i], SMOOTHNESS[j])
    # Coordinates x in the singular basis give pixels x vt = c (u s vt): c = x s⁻¹ uᵀ.
    back = contrast * (fitted["u"] / fitted["s"]) @ rotation
    return PixelInversion(projection, eigenvalues, back, fitted["voxel_mean"], prior_scale, float(THRESHOLDS[i]),
                          float(SMOOTHNESS[j]), contrast, cv_scores)


def _smoothest_within_one_error(fold_table):
    """The (threshold, smoothness) indices: the smoothest prior whose held-out score is within one
    standard error of the best one's (the one-standard-error rule, Hastie, Tibshirani & Friedman,
    *The Elements of Statistical Learning*, 2009, §7.10), then the best threshold for it.

    Identification barely tells the smoothness values apart; a smoother image is more like what
    was seen (SSIM) at no cost to it.
    """
    means = fold_table.mean(axis=0)
    best = np.unravel_index(int(np.nanargmax(means)), means.shape)
    error = fold_table[(slice(None), *best)].std(ddof=1) / np.sqrt(len(fold_table))
    j = max(np.flatnonzero(np.nanmax(means, axis=0) >= means[best] - error))
    return int(np.nanargmax(means[:, j])), int(j)


def _fit(z, image_index, targets, image_means, counts, images, seed):
    """The encoding model on ``images`` (indices): per-voxel ridge from their centred pixels,
    in the basis of the pixels' right singular vectors."""
    weight = np.asarray(counts, dtype=np.float64)[images]
    weight /= weight.sum()
    pixel_mean, voxel_mean = weight @ targets[images], weight @ image_means[images]
    u, s, vt = np.linalg.svd(targets[images] - pixel_mean, full_matrices=False)
    rank = int(np.sum(s > s[0] * 1e-10))
    u, s, vt = u[:, :rank], s[:rank], vt[:rank]
    responses = image_means[images] - voxel_mean
    alphas = ENCODING_ALPHAS * np.mean(s**2)
    basis = u * s
    folds = np.random.default_rng([seed, len(basis), 1]).permutation(len(basis)) % N_FOLDS
    error = _held_out(basis, responses, alphas, folds)
    best = error.argmin(axis=0)
    total = ((responses - responses.mean(axis=0)) ** 2).sum(axis=0)
    r2 = 1.0 - error[best, np.arange(len(best))] / np.where(total > 0, total, np.inf)
    projected = u.T @ responses
    encoding = np.empty_like(projected)  # (rank, n_voxels): voxel v's weights on the basis
    for k in np.unique(best):
        encoding[:, best == k] = (s / (s**2 + alphas[k]))[:, None] * projected[:, best == k]
    # The noise of one trial: its residual from the prediction of a model fitted without its
    # image. In-sample residuals are smaller, and would make the decoded images too bold.
    predicted = _held_out(basis, responses, alphas, folds, best) + voxel_mean
    position = np.full(len(counts), -1)
    position[images] = np.arange(len(images))
    trials = position[image_index] >= 0
    noise = np.maximum((z[trials] - predicted[position[image_index[trials]]]).var(axis=0), 1e-12)
    return {"u": u, "s": s, "vt": vt, "pixel_mean": pixel_mean, "voxel_mean": voxel_mean,
            "encoding": encoding, "r2": r2, "noise": noise, "n_pixels": targets.shape[1]}


def _held_out(basis, responses, alphas, folds, best=None):
    """Each voxel's ridge on held-out images, by folds over images.

    Without ``best``: the summed squared error for each alpha, shape (n_alphas, n_voxels). With
    ``best`` (each voxel's alpha, an index): the held-out predictions, shape of ``responses``.
    """
    error = np.zeros((len(alphas), responses.shape[1]))
    predictions = np.empty_like(responses)
    for fold in range(N_FOLDS):
        train, held = folds != fold, folds == fold
        u, s, vt = np.linalg.svd(basis[train], full_matrices=False)
        mean = responses[train].mean(axis=0)
        projected = u.T @ (responses[train] - mean)
        held_basis = basis[held] @ vt.T
        for k, alpha in enumerate(alphas):
            voxels = slice(None) if best is None else best == k
            if best is not None and not voxels.any():
                continue
            predicted = (held_basis * (s / (s**2 + alpha))) @ projected[:, voxels] + mean[voxels]
            if best is None:
                error[k] += ((responses[held] - predicted) ** 2).sum(axis=0)
            else:
                predictions[np.ix_(held, voxels)] = predicted
    return error if best is None else predictions


def _grid_laplacian(side):
    """Graph Laplacian of a ``side`` x ``side`` pixel grid (4 neighbours), dense."""
    path = np.diag(np.r_[1.0, np.full(side - 2, 2.0), 1.0]) - np.eye(side, k=1) - np.eye(side, k=-1)
    return np.kron(path, np.eye(side)) + np.kron(np.eye(side), path)


def _eigenbasis(fitted, laplacian, threshold, smoothness):
    """``Qᵀ A W`` (zero off the kept voxels), ``h``, ``g`` and ``Q`` for one trial's precision
    ``A W Aᵀ`` and the prior's ``P``: ``A W Aᵀ Q = P Q diag(h)``, ``Qᵀ P Q = I``, in the basis."""
    kept = fitted["r2"] > threshold
    encoding, precision = fitted["encoding"][:, kept], 1.0 / fitted["noise"][kept]
    weighted = encoding * precision
    prior = np.eye(len(encoding)) + smoothness / 8.0 * (fitted["vt"] @ laplacian @ fitted["vt"].T)
    eigenvalues, rotation = scipy.linalg.eigh(weighted @ encoding.T, prior)
    eigenvalues = np.maximum(eigenvalues, 0.0)
    projection = np.zeros((len(rotation), len(kept)))
    projection[:, kept] = rotation.T @ weighted
    prior_scale = max(float(eigenvalues.sum()) / fitted["n_pixels"], 1e-12)
    return projection, eigenvalues, prior_scale, rotation


def _posterior(projection, eigenvalues, prior_scale, centred, n_trials):
    """Posterior means in the eigenbasis, each sample under its most likely prior strength.

    For a sample averaging ``n`` trials the precision is ``n`` times one trial's, so in the
    eigenbasis ``q = n Qᵀ A W (z − z̄)`` and ``h_n = n h``; the posterior mean under the prior
    ``λ g`` is ``q / (λ g + h_n)`` and minus twice the log marginal likelihood is, up to terms
    without ``λ``, ``Σ log(1 + h_n / (λ g)) − Σ q² / (λ g + h_n)``.
    """
    n_trials = np.asarray(n_trials, dtype=np.float64).reshape(-1, 1)
    q = (centred @ projection.T) * n_trials
    h = eigenvalues[None, :] * n_trials
    priors = PRIOR_WEIGHTS * prior_scale
    nll = np.stack([np.log1p(h / prior).sum(axis=1) - (q**2 / (prior + h)).sum(axis=1) for prior in priors], axis=1)
    chosen = priors[np.argmin(nll, axis=1)][:, None]
    return q / (chosen + h)
