"""The small image decoded by inverting population-receptive-field models (``--pixel-decoder prf``).

A ridge from voxels to pixels learns a free map for every pixel from the training images alone,
and a ridge from pixels to each voxel (:mod:`bidsrecon.decoding.pixel_inversion`) a free weight
for every pixel of every voxel: with a few hundred training images both keep what natural images
share, little of a ring's hole or a letter's strokes. A voxel of early visual cortex is far
simpler than either assumes: it pools a small, roughly Gaussian part of the visual field (its
population receptive field, Dumoulin & Wandell 2008, NeuroImage 39: 647-660). This decoder fits
that model and inverts it (inverse retinotopy, Thirion et al. 2006, NeuroImage 33: 1104-1116).

The encoding model of a voxel: one Gaussian pRF from a grid (centres every ``side / 16`` pixels,
:data:`PRF_SIGMAS` wide at 32 px) pooling the small image's luminance, red-green and blue-yellow
channels (three signed weights), plus its pooled local contrast (one more weight, a nuisance
term, unknown when decoding and taken at its training mean). Each voxel gets the grid's pRF that
explains most of its training images' trial-averaged responses by least squares, four numbers
learnt from hundreds of images, where a ridge on pixels learns a thousand. Voxels whose best
pRF explains less than :data:`R2_THRESHOLD` of their variance, or less than 99 % of the voxels'
best pRFs explain with the training images shuffled (chance, with a thousand candidates to
choose from), are left out.

Decoding is the posterior mean of a linear-Gaussian model: the kept voxels' responses are
``A x`` plus noise (each voxel's single-trial residual variance over the trials the sample
averages), ``x`` the image's channels, with a Gaussian prior whose covariance is the training
images' own plus :data:`ISOTROPIC_SHARE` times a smooth isotropic one (white noise blurred by
:data:`PRIOR_BLUR_PX`, each channel at its training variance), which covers what a few hundred
images do not span; each test sample scales that covariance by the factor ``s`` under which it is
most likely (its evidence, MacKay 1992), times :data:`PRIOR_SCALE_FACTOR`, so an item that drives
the voxels weakly, a letter on grey, is shrunk more towards the mean than a photograph::

    x̂ = x̄ + (Aᵀ M⁻¹ A + Σ⁻¹ / s)⁻¹ Aᵀ M⁻¹ (z − z̄),    M = N / n + τ² 1 1ᵀ

``τ²`` is the variance of an offset that every voxel of a sample shares, chosen with ``s`` from
:data:`OFFSET_VARIANCES` by the same evidence. Each run is normalised as a whole, so a test
sample can sit above or below the training samples everywhere at once: a letter run's 12-s
blocks and rests balance otherwise than a training run's (a mean offset over voxels of 0.11-0.29
SD per item on the ds001506 preset). Unmodelled, the offset reads as a bright or dark image, or
as the largest prior scale with saturated colour; marginalised, it is a nuisance the item's
evidence sizes (0 where there is none). ``M`` is diagonal plus rank one, so every step stays O(3 s²)
per item and prior scale in the prior's eigenbasis (Sherman-Morrison, the determinant lemma).

The model is fitted on the training samples only. It is not saved with the decoder: applying a
saved decoder fits it again from the decoder's training samples, to the same bits. Measured on the
demo preset by ``bench/validity.py`` (see ``docs/validity.md``).
"""
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from bidsrecon.decoding.cross_validation import image_means
from bidsrecon.parallel import in_task_threads

#: pRF widths (Gaussian SD) searched, in pixels of a 32-px image (scaled for other sizes).
PRF_SIGMAS = (0.7, 1.2, 2.0, 3.5, 6.0, 10.0)
#: pRF centres per side of the grid.
PRF_CENTRES = 16
#: Share of a voxel's trial-averaged training variance its best pRF must explain to be kept (at
#: least; see :func:`fit_prf_decoder` for the chance level).
R2_THRESHOLD = 0.05
#: The prior's isotropic part, relative to the training images' covariance (equal total variance).
ISOTROPIC_SHARE = 1.0
#: SD of the blur that makes the isotropic part smooth, in pixels of a 32-px image.
PRIOR_BLUR_PX = 1.0
#: Scales of the prior covariance each test sample chooses from by its evidence (1: as fitted).
PRIOR_SCALES = tuple(np.logspace(-2.5, 1, 15))
#: Each sample's prior scale is this times the one its evidence chooses. The evidence puts one scale
#: on the whole image, so a shape on grey gets a compromise between its grey background (no
#: signal) and the shape; once :mod:`bidsrecon.decoding.pixel_denoise` sets the background back to
#: grey where it holds only noise, the shape's own, larger scale is what matters. Chosen by
#: ``bench/validity.py`` among 1, 2 and 3 (see ``docs/validity.md``, "The pixel stage by inverting pRF models").
PRIOR_SCALE_FACTOR = 2.0
#: Variances of the offset shared by all of a sample's voxels (z units), each sample choosing one with
#: its prior scale by their joint evidence (0: none). Measured by ``bench/validity.py``: see
#: ``docs/validity.md``, "The pixel stage by inverting pRF models".
OFFSET_VARIANCES = (0.0, 0.003, 0.01, 0.03, 0.1)
#: Candidates whose fits are computed at once (bounds the memory of the search).
CANDIDATE_CHUNK = 128
#: Luminance (Rec. 601 luma, centred on the grey background), red-green and blue-yellow of RGB.
_CHANNELS = np.array([[0.299, 0.587, 0.114], [1.0, -1.0, 0.0], [-0.5, -0.5, 1.0]])
_GREY = np.array([0.5, 0.0, 0.0])


def to_channels(pixels):
    """(n, 3, s, s) RGB in [0, 1] to (n, 3, s * s) luminance − 0.5, red − green, blue − yellow."""
    pixels = np.asarray(pixels, dtype=np.float64)
    channels = np.einsum("kc,nchw->nkhw", _CHANNELS, pixels) - _GREY[None, :, None, None]
    return channels.reshape(len(pixels), 3, -1)


def from_channels(channels, side):
    """The exact inverse of :func:`to_channels`: (n, 3, side * side) to (n, 3, side, side) RGB."""
    channels = np.asarray(channels).reshape(-1, 3, side, side) + _GREY[None, :, None, None]
    return np.einsum("ck,nkhw->nchw", np.linalg.inv(_CHANNELS), channels)


def prf_grid(side):
    """Gaussian pRFs of the search, each summing to 1: ndarray (n_candidates, side * side)."""
    coords = np.arange(side) + 0.5
    centres = (np.arange(PRF_CENTRES) + 0.5) * side / PRF_CENTRES
    y, x = np.meshgrid(coords, coords, indexing="ij")
    fields = []
    for sigma in np.asarray(PRF_SIGMAS) * side / 32:
        for y0 in centres:
            for x0 in centres:
                field = np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma ** 2)).ravel()
                fields.append(field / field.sum())
    return np.array(fields)


def local_contrast(channels, side):
    """Each pixel's luminance minus its 1-px blur, in absolute value: (n, side * side)."""
    luminance = channels[:, 0].reshape(-1, side, side)
    return np.abs(luminance - gaussian_filter(luminance, (0, side / 32, side / 32))).reshape(len(channels), -1)


class NoResponsiveVoxels(ValueError):
    """No voxel's pRF explains its training responses better than chance."""


@dataclass(frozen=True)
class PrfDecoder:
    """A fitted pRF inversion.

    Attributes
    ----------
    voxels : ndarray of int, shape (n_kept,)
        Columns of the samples it uses.
    candidates : ndarray of int, shape (n_kept,)
        Each kept voxel's pRF, a row of :func:`prf_grid`.
    encoding : ndarray, shape (n_kept, 3 * side * side)
        ``A``: each kept voxel's pRF times its weight on each channel.
    noise : ndarray, shape (n_kept,)
        Single-trial residual variance of each kept voxel.
    response_mean : ndarray, shape (n_kept,)
        ``z̄``, the kept voxels' mean over the training images.
    channel_mean : ndarray, shape (3 * side * side,)
        ``x̄``, the training images' mean channels.
    prior_factor : ndarray, shape (3 * side * side, 3 * side * side)
        ``L``, the lower Cholesky factor of the prior covariance ``Σ = L Lᵀ``.
    eigenvalues, eigenvectors : ndarray, shapes (3 * side * side,) and (3 * side * side,) * 2
        ``e``, ``U`` of one trial's data precision in the prior's whitened pixels,
        ``Lᵀ Aᵀ N⁻¹ A L = U diag(e) Uᵀ``, where each item's prior scale costs a division.
    offset_loading : ndarray, shape (3 * side * side,)
        ``b = Uᵀ Lᵀ Aᵀ N⁻¹ 1``: how an offset on every voxel reads in those pixels.
    offset_precision : float
        ``κ = 1ᵀ N⁻¹ 1``.
    side : int
    r2 : ndarray, shape (n_voxels,)
        Every voxel's variance explained by its best pRF.
    """

    voxels: np.ndarray
    candidates: np.ndarray
    encoding: np.ndarray
    noise: np.ndarray
    response_mean: np.ndarray
    channel_mean: np.ndarray
    prior_factor: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    offset_loading: np.ndarray
    offset_precision: float
    side: int
    r2: np.ndarray

    def _projections(self, z):
        """Each sample's ``c = Uᵀ Lᵀ Aᵀ N⁻¹ (z − z̄)``, (n_items, 3 s²), and ``w = 1ᵀ N⁻¹ (z − z̄)``, (n_items,)."""
        centred = (np.asarray(z, dtype=np.float64)[:, self.voxels] - self.response_mean) / self.noise
        return (centred @ self.encoding @ self.prior_factor) @ self.eigenvectors, centred.sum(axis=1)

    @in_task_threads
    def hyperparameters(self, z, n_trials):
        """Each sample's prior scale and offset variance: :data:`PRIOR_SCALE_FACTOR` times the scale of
        :data:`PRIOR_SCALES`, and the variance of :data:`OFFSET_VARIANCES`, under which it is most likely.

        With ``C₀ = s A Σ Aᵀ + N / n`` the evidence of ``y = z − z̄ ~ N(0, C₀ + τ² 1 1ᵀ)`` is, up to
        terms without ``s`` or ``τ²``, ``−½ Σ_i log(1 + s n e_i) + ½ n² Σ_i c_i² / (1/s + n e_i)
        − ½ log(1 + τ² q) + ½ τ² p² / (1 + τ² q)``, with ``q = 1ᵀ C₀⁻¹ 1 = n κ − n² Σ_i b_i² / (1/s + n e_i)``
        and ``p = 1ᵀ C₀⁻¹ y = n w − n² Σ_i b_i c_i / (1/s + n e_i)`` (Woodbury and the determinant lemma;
        MacKay 1992, "Bayesian interpolation", Neural Computation 4: 415-447, for the scale).

        Returns
        -------
        scales, offset_variances : ndarray, shape (n_items,) each
        """
        return self._hyperparameters(*self._projections(z), n_trials)

    def _hyperparameters(self, whitened, total, n_trials):
        n = np.asarray(n_trials, dtype=np.float64).ravel()[:, None]
        scales, offsets = np.asarray(PRIOR_SCALES), np.asarray(OFFSET_VARIANCES)
        inverse = 1 / (1 / scales[None, :, None] + n[:, :, None] * self.eigenvalues)      # (items, S, K)
        fit = -0.5 * np.log1p(scales[None, :, None] * n[:, :, None] * self.eigenvalues).sum(axis=2)
        fit += 0.5 * n ** 2 * (whitened[:, None, :] ** 2 * inverse).sum(axis=2)
        q = n * self.offset_precision - n ** 2 * (inverse @ self.offset_loading ** 2)
        p = n * total[:, None] - n ** 2 * (inverse * (whitened * self.offset_loading)[:, None, :]).sum(axis=2)
        t, q, p = offsets[None, None, :], q[..., None], p[..., None]
        evidence = fit[..., None] - 0.5 * np.log1p(t * q) + 0.5 * t * p ** 2 / (1 + t * q)   # (items, S, T)
        best = evidence.reshape(len(n), -1).argmax(axis=1)
        return PRIOR_SCALE_FACTOR * scales[best // len(offsets)], offsets[best % len(offsets)]

    def _posterior(self, z, n_trials):
        """What :meth:`decode` and :meth:`noise_variance` share.

        In the whitened, rotated pixels the posterior precision is ``diag(D) − γ b bᵀ`` with
        ``D = n e + 1/s`` and ``γ = n² τ² / (1 + n τ² κ)``, whose inverse is ``diag(1/D) + β v vᵀ``
        with ``v = b / D`` and ``β = γ / (1 − γ bᵀ v)`` (Sherman-Morrison).

        Returns
        -------
        n, scales, D, v, beta, rhs : the trials (n_items, 1), the prior scales (n_items, 1), ``D``,
        ``v`` (n_items, 3 s²), ``β`` (n_items, 1), and ``Uᵀ Lᵀ Aᵀ M⁻¹ (z − z̄) = n c − γ w b``.
        """
        n = np.asarray(n_trials, dtype=np.float64).ravel()[:, None]
        whitened, total = self._projections(z)
        scales, offsets = (values[:, None] for values in self._hyperparameters(whitened, total, n_trials))
        precision = n * self.eigenvalues + 1 / scales
        gamma = n ** 2 * offsets / (1 + n * offsets * self.offset_precision)
        v = self.offset_loading / precision
        beta = gamma / (1 - gamma * (v @ self.offset_loading)[:, None])
        return n, scales, precision, v, beta, n * whitened - gamma * total[:, None] * self.offset_loading

    @in_task_threads
    def noise_variance(self, z, n_trials):
        """How much of :meth:`decode`'s output measurement noise and the offset alone would put there: its variance.

        A sample that is the mean of ``n`` trials carries noise and offset of covariance ``M``, under
        which the posterior mean ``r = P⁻¹ g`` in the whitened, rotated pixels (``P`` the posterior
        precision, ``g`` its right-hand side) has covariance ``P⁻¹ (P − I / s) P⁻¹ = P⁻¹ − P⁻¹ P⁻¹ / s``;
        the channels ``x = x̄ + L U r`` then have the diagonal of ``(L U) (P⁻¹ − P⁻¹ P⁻¹ / s) (L U)ᵀ``.
        Without an offset that is ``Σ_k (L U)_ik² n e_k / (n e_k + 1/s)²`` at each value ``i``.

        Parameters
        ----------
        z, n_trials :
            As for :meth:`decode` (the prior scale and offset of each sample depend on them).

        Returns
        -------
        ndarray, shape (n_items, 3, side * side)
            Per channel (luminance, red-green, blue-yellow) and pixel, as :func:`to_channels` has them.
        """
        n, scales, precision, v, beta, _ = self._posterior(z, n_trials)
        loading = self.prior_factor @ self.eigenvectors
        diagonal = (n * self.eigenvalues / precision ** 2) @ (loading ** 2).T
        along, along_scaled = v @ loading.T, (v / precision) @ loading.T
        rank_one = ((beta - beta ** 2 * (v ** 2).sum(axis=1, keepdims=True) / scales) * along ** 2
                    - 2 * beta / scales * along * along_scaled)
        return (diagonal + rank_one).reshape(len(n), 3, -1)

    @in_task_threads
    def decode(self, z, n_trials):
        """Posterior-mean small images of test samples, each under its own prior scale and offset variance.

        Parameters
        ----------
        z : ndarray, shape (n_items, n_voxels)
            Samples z-scored as the training samples were, each the mean of ``n_trials`` trials.
        n_trials : array-like of int, shape (n_items,)

        Returns
        -------
        ndarray, shape (n_items, 3, side, side), float32 RGB (not clipped)
        """
        _, _, precision, v, beta, rhs = self._posterior(z, n_trials)
        rotated = rhs / precision + beta * v * (v * rhs).sum(axis=1, keepdims=True)
        decoded = (rotated @ self.eigenvectors.T) @ self.prior_factor.T
        return from_channels(decoded + self.channel_mean, self.side).astype(np.float32)


@in_task_threads
def fit_prf_decoder(z, image_index, pixels, counts):
    """Fit each voxel's pRF on the training samples and the decoder's prior.

    Parameters
    ----------
    z : ndarray, shape (n_samples, n_voxels)
        Z-scored training samples, one per trial (the kernel decoder's ``X_``).
    image_index : ndarray of int, shape (n_samples,)
    pixels : ndarray, shape (n_images, 3, side, side)
        The training images' small RGB images (:func:`bidsrecon.decoding.pixels.pixel_targets`).
    counts : ndarray of int, shape (n_images,)
        Trials of each training image.

    Returns
    -------
    PrfDecoder

    Raises
    ------
    NoResponsiveVoxels
        When no voxel's pRF explains more of its responses than the threshold.
    """
    z = np.asarray(z, dtype=np.float64)
    side = pixels.shape[-1]
    channels = to_channels(pixels)
    n_images = len(channels)
    seen = counts > 0
    means = image_means(z, image_index, n_images)
    responses = means[seen] - means[seen].mean(axis=0)
    total = (responses ** 2).sum(axis=0)
    total[total == 0] = np.inf  # a constant voxel explains nothing

    grid = prf_grid(side)
    contrast = local_contrast(channels, side)[seen]
    best_r2, best, best_weights = _best_prfs(responses, total, channels[seen], contrast, grid)
    # With hundreds of candidates, pure noise finds a pRF that explains some of it: the threshold is
    # at least what 99 % of the voxels explain with the images shuffled (one seeded permutation).
    shuffled = np.random.default_rng(0).permutation(len(responses))
    null_r2, _, _ = _best_prfs(responses[shuffled], total, channels[seen], contrast, grid)
    threshold = max(R2_THRESHOLD, float(np.quantile(null_r2[np.isfinite(null_r2)], 0.99)))

    voxels = np.flatnonzero(best_r2 > threshold)
    if len(voxels) == 0:
        raise NoResponsiveVoxels(f"No voxel's pRF explains more than {threshold:.3f} of its responses to the "
                                 "training images; the pRF decoder has nothing to invert.")
    fields = grid[best[voxels]]
    encoding = np.concatenate([best_weights[voxels, channel, None] * fields for channel in range(3)], axis=1)
    # Single-trial residuals: each trial against its image's predicted response (contrast included).
    pooled = np.stack([channels[seen, channel] @ fields.T for channel in range(3)]
                      + [contrast @ fields.T], axis=1)                          # (n_seen, 4, n_kept)
    pooled -= pooled.mean(axis=0)
    predicted = np.zeros((n_images, len(voxels)))
    predicted[seen] = np.einsum("nkv,vk->nv", pooled, best_weights[voxels]) + means[seen][:, voxels].mean(axis=0)
    residuals = z[:, voxels] - predicted[image_index]
    noise = residuals.var(axis=0)

    weights = counts[seen] / counts[seen].sum()
    flat = channels[seen].reshape(seen.sum(), -1)
    channel_mean = weights @ flat
    centred = flat - channel_mean
    covariance = centred.T @ (centred * weights[:, None])
    covariance += ISOTROPIC_SHARE * _isotropic_prior(channels[seen], weights, side)
    factor = np.linalg.cholesky(covariance)
    whitened_encoding = encoding @ factor
    eigenvalues, eigenvectors = np.linalg.eigh(whitened_encoding.T @ (whitened_encoding / noise[:, None]))
    return PrfDecoder(voxels=voxels, candidates=best[voxels], encoding=encoding, noise=noise,
                      response_mean=means[seen][:, voxels].mean(axis=0), channel_mean=channel_mean,
                      prior_factor=factor, eigenvalues=np.clip(eigenvalues, 0, None), eigenvectors=eigenvectors,
                      offset_loading=(1 / noise) @ whitened_encoding @ eigenvectors,
                      offset_precision=float(np.sum(1 / noise)), side=side, r2=best_r2)


def _best_prfs(responses, total, channels, contrast, grid):
    """Each voxel's best pRF of ``grid`` by least squares: its R², index and four weights."""
    n_voxels = responses.shape[1]
    best_r2 = np.full(n_voxels, -np.inf)
    best = np.zeros(n_voxels, dtype=np.intp)
    best_weights = np.zeros((n_voxels, 4))
    for start in range(0, len(grid), CANDIDATE_CHUNK):
        fields = grid[start:start + CANDIDATE_CHUNK]
        # Each candidate's four regressors (three channels and the contrast, pooled), centred.
        design = np.concatenate([channels @ fields.T, (contrast @ fields.T)[:, None]], axis=1)
        design -= design.mean(axis=0)
        n_chunk = len(fields)
        projections = design.reshape(len(design), -1).T @ responses          # (4 * n_chunk, n_voxels)
        projections = projections.reshape(4, n_chunk, -1).transpose(1, 0, 2)  # (n_chunk, 4, n_voxels)
        gram = np.einsum("nkc,nlc->ckl", design, design)
        weights = np.linalg.solve(gram, projections)                          # (n_chunk, 4, n_voxels)
        r2 = np.einsum("ckv,ckv->cv", weights, projections) / total
        chunk_best = r2.argmax(axis=0)
        chunk_r2 = r2[chunk_best, np.arange(n_voxels)]
        better = chunk_r2 > best_r2
        best_r2[better], best[better] = chunk_r2[better], start + chunk_best[better]
        best_weights[better] = weights[chunk_best[better], :, np.flatnonzero(better)]
    return best_r2, best, best_weights


def _isotropic_prior(channels, weights, side):
    """Blurred white noise with each channel's training variance: (3 s², 3 s²)."""
    identity = np.eye(side * side).reshape(-1, side, side)
    blur = gaussian_filter(identity, (0, PRIOR_BLUR_PX * side / 32, PRIOR_BLUR_PX * side / 32),
                           mode="constant").reshape(side * side, -1)
    smooth = blur @ blur.T
    smooth /= np.mean(np.diag(smooth))
    mean = weights @ channels.reshape(len(channels), -1)
    variance = (weights @ (channels.reshape(len(channels), -1) - mean) ** 2).reshape(3, -1).mean(axis=1)
    return np.kron(np.diag(variance), smooth)
