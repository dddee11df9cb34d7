"""The pRF decoder's second step: voxels that also respond to edges, inverted by optimisation.

The linear pRF model (:mod:`bidsrecon.decoding.pixel_prf`) explains a voxel by the luminance and
colour its pRF pools. Early visual cortex also responds to contrast: a voxel whose pRF sees a
black letter's strokes on grey pools little net luminance but much edge energy, and its
response grows compressively with that energy (compressive spatial summation, Kay et al. 2013,
J Neurophysiol 110: 481-494). The linear model leaves that part of the signal unexplained (it
was a nuisance term there), and with it most of what tells a letter, or a cross from an X.

Here each kept voxel's response is modelled, at its fitted pRF, as

    r = w_lum · pooled luminance + w_rg · pooled red-green + w_by · pooled blue-yellow
        + Σ_k u_k · (pooled contrast energy_k) ^ ENERGY_EXPONENT

with the energy of quadrature Gabor pairs at :data:`ENERGY_WAVELENGTHS_PX` and four orientations
(Adelson & Bergen 1985) on the small image's luminance. The weights are fitted by least squares
on the trial-averaged training responses and shrunk towards the kept voxels' population
(empirical Bayes, :func:`_population_shrunk_weights`), the noise is each voxel's single-trial
residual variance under this model.

Decoding is the maximum a posteriori image under this model with the linear decoder's Gaussian
prior and offset shared by the voxels (at the item's own prior scale and offset variance, chosen by
its evidence under the linear model; the offset is found with the image), found by L-BFGS
from the linear posterior mean: the energy term is not linear in the image, so the posterior has
no closed form. The pooling by a Gaussian pRF of the grid is separable (``G_y M G_xᵀ``), which
keeps each evaluation to a few small matrix products.

Measured by ``bench/validity.py --app-args --pixel-decoder prf`` (demo preset, seeds 0-2, the
mean), the linear pRF decoder → this: pixel identification natural 0.974 → 0.984, shapes
0.924 → 0.949, letters 0.826 → 0.826, imagery 0.722 → 0.869; shape identification 0.767 → 0.775;
SSIM 0.299 → 0.310, 0.403 → 0.481, 0.684 → 0.639, 0.411 → 0.503. Imagery gains most: the voxels of
later areas, which imagery drives most, respond to contrast energy more than to luminance.
"""
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from bidsrecon.decoding.cross_validation import image_means
from bidsrecon.decoding.pixel_prf import PRF_CENTRES, PRF_SIGMAS, from_channels, to_channels
from bidsrecon.parallel import in_task_threads, map_tasks

#: Gabor wavelengths, in pixels of a 32-px image (scaled for other sizes).
ENERGY_WAVELENGTHS_PX = (3.0, 6.0)
ENERGY_ORIENTATIONS = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
#: Compression of the pooled energy (Kay et al. 2013 fit 0.1-0.5 for the whole response in V1-V3
#: at fMRI resolution; the energy part alone compresses less).
ENERGY_EXPONENT = 0.6
#: Ridge on each voxel's least-squares estimate, relative to the mean diagonal of its Gram matrix:
#: a numerical guard only, the population prior does the shrinking (a ridge would bias the
#: estimates the prior is measured from).
WEIGHT_RIDGE = 1e-9
#: Smallest eigenvalue of the population prior's covariance, relative to its largest.
PRIOR_FLOOR = 1e-6
#: L-BFGS iterations of the refinement per block of items. On bench/validity.py, 50 instead scored
#: letters 0.807 instead of 0.826 and lost EfficientNet identification to the baseline on one seed.
ITERATIONS = 100
#: Items refined together (one task each: the bits do not depend on the thread count).
ITEM_BLOCK = 8
_FLOOR = 1e-6


def gabor_pairs(side):
    """Even and odd unit-norm Gabor kernels: list of (2, 1, k, k) float64 tensors, one per filter."""
    pairs = []
    for wavelength in np.asarray(ENERGY_WAVELENGTHS_PX) * side / 32:
        sigma = 0.56 * wavelength  # about one octave of bandwidth
        half = int(np.ceil(2.5 * sigma))
        x, y = np.meshgrid(np.arange(-half, half + 1), np.arange(-half, half + 1), indexing="xy")
        envelope = np.exp(-(x ** 2 + y ** 2) / (2 * sigma ** 2))
        for angle in ENERGY_ORIENTATIONS:
            along = x * np.cos(angle) + y * np.sin(angle)
            even = envelope * np.cos(2 * np.pi * along / wavelength)
            even -= envelope * even.sum() / envelope.sum()  # no response to uniform luminance
            odd = envelope * np.sin(2 * np.pi * along / wavelength)
            pairs.append(torch.from_numpy(np.stack([even / np.linalg.norm(even), odd / np.linalg.norm(odd)])[:, None]))
    return pairs


def contrast_energy(luminance, pairs):
    """(n, s, s) luminance centred on grey to (n, n_filters, s, s) quadrature energy (zero padding: grey)."""
    x = luminance[:, None]
    maps = [torch.sqrt((torch.nn.functional.conv2d(x, pair, padding=pair.shape[-1] // 2) ** 2).sum(dim=1) + _FLOOR)
            for pair in pairs]
    return torch.stack(maps, dim=1)


def pooling_factors(side):
    """(n_sigmas, PRF_CENTRES, side) 1-D Gaussians whose outer products are :func:`prf_grid`'s fields."""
    coords = np.arange(side) + 0.5
    centres = (np.arange(PRF_CENTRES) + 0.5) * side / PRF_CENTRES
    factors = np.exp(-(coords[None, None] - centres[None, :, None]) ** 2
                     / (2 * (np.asarray(PRF_SIGMAS) * side / 32)[:, None, None] ** 2))
    return torch.from_numpy(factors / factors.sum(axis=2, keepdims=True))


def pool(maps, factors, candidates):
    """Each candidate pRF's pooled value of each map: (n, m, s, s) to (n, m, len(candidates)).

    ``prf_grid`` orders its fields by width, then centre row, then centre column.
    """
    rows = torch.einsum("ajy,nmyx->nmajx", factors, maps)
    pooled = torch.einsum("nmajx,aix->nmaji", rows, factors)
    return pooled.reshape(*pooled.shape[:2], -1)[:, :, candidates]


def design(channels, side, factors, pairs, candidates):
    """The regressors of every kept voxel: (n, 3 + n_filters, n_kept); channels (n, 3, s * s)."""
    images = channels.reshape(len(channels), 3, side, side)
    energy = contrast_energy(images[:, 0], pairs)
    return torch.cat([pool(images, factors, candidates),
                      (pool(energy, factors, candidates) + _FLOOR) ** ENERGY_EXPONENT], dim=1)


@dataclass(frozen=True)
class EnergyModel:
    """Each kept voxel's fitted luminance, colour and energy weights.

    Attributes
    ----------
    weights : ndarray, shape (n_kept, 3 + n_filters)
    design_mean : ndarray, shape (3 + n_filters, n_kept)
        The regressors' training mean (the model predicts deviations from it).
    response_mean : ndarray, shape (n_kept,)
    noise : ndarray, shape (n_kept,)
        Single-trial residual variance under this model.
    r2 : ndarray, shape (n_kept,)
        Share of the trial-averaged training variance explained.
    factors : ndarray, shape (n_widths, n_centres, side)
        The 1-D Gaussians whose outer products are the fields the voxels' candidates index
        (:func:`pool`); :func:`refine` pools through the same.
    """

    weights: np.ndarray
    design_mean: np.ndarray
    response_mean: np.ndarray
    noise: np.ndarray
    r2: np.ndarray
    factors: np.ndarray


@in_task_threads
def fit_energy_model(prf, z, image_index, pixels, counts, factors=None):
    """Fit the weights of the voxels ``prf`` kept, at their pRFs (arguments as ``fit_prf_decoder``).

    ``factors`` (a tensor, as :func:`pooling_factors` returns) are the fields ``prf.candidates``
    index; by default the search grid's.

    Returns
    -------
    EnergyModel
    """
    side = prf.side
    factors = pooling_factors(side) if factors is None else factors
    seen = np.asarray(counts) > 0
    with torch.no_grad():
        regressors = design(torch.from_numpy(to_channels(pixels)[seen]), side, factors,
                            gabor_pairs(side), torch.from_numpy(prf.candidates)).numpy()
    means = image_means(np.asarray(z, dtype=np.float64), image_index, len(pixels))[seen][:, prf.voxels]
    design_mean, response_mean = regressors.mean(axis=0), means.mean(axis=0)
    centred, responses = regressors - design_mean, means - response_mean
    weights = _population_shrunk_weights(centred, responses)
    predicted = np.einsum("nkv,vk->nv", centred, weights)
    total = (responses ** 2).sum(axis=0)
    r2 = 1 - ((responses - predicted) ** 2).sum(axis=0) / np.where(total > 0, total, np.inf)
    per_image = np.zeros((len(pixels), len(prf.voxels)))
    per_image[seen] = predicted + response_mean
    noise = (np.asarray(z, dtype=np.float64)[:, prf.voxels] - per_image[image_index]).var(axis=0)
    return EnergyModel(weights=weights, design_mean=design_mean, response_mean=response_mean,
                       noise=np.maximum(noise, 1e-12), r2=r2, factors=factors.numpy())


def _population_shrunk_weights(centred, responses):
    """Each voxel's weights, its least-squares estimate shrunk towards the kept voxels' population.

    Eleven weights from a few hundred noisy trial averages are noisy, most in the directions the
    images rarely vary alone (one orientation's energy against another's). Empirical Bayes
    (Efron & Morris 1973, JASA 68: 117-130): the population's mean and covariance of the
    weights, less the mean sampling covariance, are the prior of each voxel's weights; each voxel
    gets the posterior mean. Weights are compared on regressors standardised per voxel, so a
    wide pRF's weights (whose pooled regressors vary less) are on the scale of a narrow one's.

    ``bench/validity.py``, seeds 0-2, mean, least squares with a ridge of 1e-3 → this: letters
    0.885 → 0.893, shape identification 0.815 → 0.821, imagery 0.871 → 0.869, SSIM up by
    0.003-0.006 on every set, EfficientNet-Lite0 on natural images 0.578 → 0.556; cells behind the
    linear baseline 7 → 6.

    Parameters
    ----------
    centred : ndarray, shape (n_images, n_regressors, n_kept)
    responses : ndarray, shape (n_images, n_kept)

    Returns
    -------
    ndarray, shape (n_kept, n_regressors)
    """
    spread = centred.std(axis=0)
    spread = np.where(spread > 0, spread, 1.0)
    standard = centred / spread
    gram = np.einsum("nkv,nlv->vkl", standard, standard)
    n_images, n_regressors = standard.shape[:2]
    gram += (WEIGHT_RIDGE * n_images) * np.eye(n_regressors)
    moment = np.einsum("nkv,nv->vk", standard, responses)
    estimates = np.linalg.solve(gram, moment[..., None])[..., 0]
    residual = responses - np.einsum("nkv,vk->nv", standard, estimates)
    residual_variance = (residual ** 2).sum(axis=0) / max(n_images - n_regressors - 1, 1)
    residual_variance = np.maximum(residual_variance, 1e-12)
    if len(estimates) <= n_regressors:  # too few voxels to estimate the population's covariance
        return estimates / spread.T
    sampling = residual_variance[:, None, None] * np.linalg.inv(gram)
    prior_mean = estimates.mean(axis=0)
    prior = np.cov(estimates.T) - sampling.mean(axis=0)
    values, vectors = np.linalg.eigh(prior)
    values = np.maximum(values, PRIOR_FLOOR * max(values.max(), 1e-12))
    prior_precision = (vectors / values) @ vectors.T
    precision = gram / residual_variance[:, None, None] + prior_precision
    posterior = np.linalg.solve(precision, (moment / residual_variance[:, None] + prior_precision @ prior_mean)[..., None])
    return posterior[..., 0] / spread.T


@in_task_threads
def refine(prf, model, z, n_trials):
    """MAP small images of test samples under the energy model, from the linear posterior mean.

    Parameters
    ----------
    prf : PrfDecoder
    model : EnergyModel
    z : ndarray, shape (n_items, n_voxels)
        Samples z-scored as the training samples were.
    n_trials : array-like of int, shape (n_items,)

    Returns
    -------
    ndarray, shape (n_items, 3, side, side), float32 RGB (not clipped)
    """
    z = np.asarray(z, dtype=np.float64)
    n_trials = np.asarray(n_trials, dtype=np.float64).ravel()
    start = to_channels(prf.decode(z, n_trials)).reshape(len(z), -1)
    scales, offsets = prf.hyperparameters(z, n_trials)
    blocks = [slice(begin, begin + ITEM_BLOCK) for begin in range(0, len(z), ITEM_BLOCK)]
    shared = _Shared(prf, model)
    with tqdm(total=len(z), unit="item", desc="small image (pRF)") as bar:
        def solve(block):
            channels = shared.solve(z[block], n_trials[block], scales[block], offsets[block], start[block])
            bar.update(len(channels))
            return channels

        refined = map_tasks(solve, blocks)
    channels = np.concatenate(refined) if refined else start
    return from_channels(channels, prf.side).astype(np.float32)


class _Shared:
    """The tensors every block's optimisation reads (never written)."""

    def __init__(self, prf, model):
        self.side = prf.side
        self.factor = torch.from_numpy(prf.prior_factor)
        self.channel_mean = torch.from_numpy(prf.channel_mean)
        self.voxels = prf.voxels
        self.candidates = torch.from_numpy(prf.candidates)
        self.factors, self.pairs = torch.from_numpy(model.factors), gabor_pairs(self.side)
        self.weights = torch.from_numpy(model.weights)
        self.design_mean = torch.from_numpy(model.design_mean)
        self.response_mean = torch.from_numpy(model.response_mean)
        self.noise = torch.from_numpy(model.noise)

    def solve(self, z, n_trials, scales, offsets, start):
        """Minimise ``n/2 Σ_v (z_v − r_v(x) − τ u)² / σ²_v + |L⁻¹(x − x̄)|² / 2s + u² / 2`` over
        ``w = L⁻¹(x − x̄)`` and the offset ``τ u`` (none where ``τ² = 0``)."""
        responses = torch.from_numpy(z[:, self.voxels]) - self.response_mean
        n = torch.from_numpy(n_trials)[:, None]
        inverse_scale = torch.from_numpy(1 / scales)[:, None]
        start = torch.from_numpy(start) - self.channel_mean
        whitened = torch.linalg.solve_triangular(self.factor, start.T, upper=False).T.contiguous()
        whitened.requires_grad_(True)
        offset_sd = torch.from_numpy(np.sqrt(offsets))[:, None]
        offset = torch.zeros_like(offset_sd, requires_grad=True)

        def energy():
            channels = self.channel_mean + whitened @ self.factor.T
            regressors = design(channels, self.side, self.factors, self.pairs, self.candidates) - self.design_mean
            predicted = torch.einsum("nkv,vk->nv", regressors, self.weights) + offset_sd * offset
            return (0.5 * (n * (responses - predicted) ** 2 / self.noise).sum()
                    + 0.5 * (inverse_scale * whitened ** 2).sum() + 0.5 * (offset ** 2).sum())

        optimiser = torch.optim.LBFGS([whitened, offset], max_iter=ITERATIONS, history_size=20, line_search_fn="strong_wolfe",
                                      tolerance_grad=1e-9, tolerance_change=1e-12)

        def closure():
            optimiser.zero_grad()
            value = energy()
            value.backward()
            return value

        optimiser.step(closure)
        return (self.channel_mean + whitened.detach() @ self.factor.T).numpy()
