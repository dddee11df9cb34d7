"""The simulated brain: an ellipsoid with visual areas and their encoding model.

Anatomy: the brain is an ellipsoid in a small RAS grid; its posterior part is visual
cortex, split from back to front into V1, V2, V3 and then hV4, LOC, FFA and PPA. The left
hemisphere sees the right visual field and dorsal areas the lower field, as in cortex.
Within its quadrant a voxel's pRF centre is drawn independently of where the voxel lies
(:func:`_prf_positions`): there is no finer retinotopic map, so neighbouring voxels do not
see neighbouring places, and a decoder cannot borrow a pRF's position from its neighbours.

Encoding model (one per voxel, drawn per subject): a Gaussian population receptive field
(pRF) pools the feature maps of :mod:`bidsrecon.simulate.features`; the response is a
signed linear sum of pooled luminance and colour opponency plus a compressive power of
pooled contrast energy and colour magnitude (compressive spatial summation, Kay et al.
2013). Early areas have small pRFs growing with eccentricity and orientation-tuned
energy; later areas have large pRFs and orientation-invariant, more compressed
responses. Voxels outside visual cortex respond to nothing.
"""
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import distance_transform_edt, gaussian_filter, zoom

from bidsrecon.simulate.features import (
    CHANNELS,
    ENERGY_CHANNELS,
    GABOR_ORIENTATIONS,
    GABOR_WAVELENGTHS_PX,
    MAGNITUDE_CHANNEL,
    MODEL_SIZE,
)

AREAS = ("V1", "V2", "V3", "hV4", "LOC", "FFA", "PPA")
ROI_NAMES = ("V1d", "V1v", "V2d", "V2v", "V3d", "V3v", "hV4", "LOC", "FFA", "PPA", "HVC")
_ROI_UNIONS = {"HVC": ("LOC", "FFA", "PPA")}
# Half-width of the stimulus field in degrees (ds001506 showed 12 x 12 degree images).
FIELD_HALF_WIDTH_DEG = 6.0
# Back-to-front share of visual cortex taken by each early area; the rest is later areas.
_EARLY_EXTENT = {"V1": 0.20, "V2": 0.18, "V3": 0.17}


@dataclass(frozen=True)
class AreaTuning:
    """How the voxels of one visual area respond.

    Sizes in degrees; weights are the SDs (signed terms) or medians (energy terms) of
    the per-voxel weights drawn for the area.
    """

    sigma_at_fovea: float
    sigma_per_degree: float
    eccentricity_range: tuple
    luminance: float
    colour_opponency: float
    colour_magnitude: float
    energy: float
    orientation_bias: float
    exponent_range: tuple
    scale_preference: float
    imagery_gain: float
    response_gain: float


AREA_TUNING = {
    "V1": AreaTuning(0.35, 0.12, (0.0, 8.5), 1.0, 0.6, 0.2, 1.0, 0.5, (0.5, 0.8), 1.0, 0.15, 1.0),
    "V2": AreaTuning(0.50, 0.18, (0.0, 8.5), 0.8, 0.5, 0.3, 1.0, 0.4, (0.45, 0.75), 1.0, 0.2, 1.0),
    "V3": AreaTuning(0.70, 0.25, (0.0, 8.5), 0.6, 0.4, 0.4, 1.0, 0.3, (0.4, 0.7), 1.0, 0.25, 1.0),
    "hV4": AreaTuning(1.0, 0.35, (0.0, 6.0), 0.3, 0.6, 1.0, 0.7, 0.1, (0.3, 0.6), 1.0, 0.4, 0.8),
    "LOC": AreaTuning(1.8, 0.45, (0.0, 5.0), 0.2, 0.2, 0.3, 1.0, 0.0, (0.25, 0.5), 1.0, 0.5, 0.8),
    "FFA": AreaTuning(1.5, 0.40, (0.0, 2.5), 0.2, 0.2, 0.4, 1.0, 0.0, (0.25, 0.5), 0.5, 0.5, 0.8),
    "PPA": AreaTuning(2.5, 0.50, (2.0, 8.0), 0.4, 0.2, 0.3, 1.0, 0.0, (0.25, 0.5), 2.0, 0.5, 0.8),
}


@dataclass(frozen=True)
class Anatomy:
    """Labels on the functional grid.

    Attributes
    ----------
    brain_mask : ndarray of bool, shape volume_shape
    area : ndarray of int8, shape volume_shape
        0 outside visual cortex, else 1 + index into :data:`AREAS`.
    left : ndarray of bool
        Left hemisphere (x below the centre).
    dorsal : ndarray of bool
        Upper half (z above the centre).
    affine : ndarray, shape (4, 4)
        Voxel-to-RAS-mm transform, centred on the grid.
    """

    brain_mask: np.ndarray
    area: np.ndarray
    left: np.ndarray
    dorsal: np.ndarray
    affine: np.ndarray

    @property
    def visual_mask(self):
        return self.area > 0


@dataclass(frozen=True)
class VoxelModel:
    """Encoding-model parameters of the visual voxels (in C order of the grid).

    Positions are in image units (the stimulus spans [-1, 1], y up). Weights are per
    voxel; ``energy_tuning`` (rows sum to 1) weighs the energy channels, for a
    preferred scale and orientation.
    """

    area: np.ndarray
    prf_x: np.ndarray
    prf_y: np.ndarray
    prf_sigma: np.ndarray
    luminance_weight: np.ndarray
    red_green_weight: np.ndarray
    blue_yellow_weight: np.ndarray
    magnitude_weight: np.ndarray
    energy_weight: np.ndarray
    energy_tuning: np.ndarray
    exponent: np.ndarray
    gain: np.ndarray
    imagery_gain: np.ndarray


def make_anatomy(volume_shape, voxel_size_mm, visual_fraction, rng):
    """Draw the ellipsoid brain and label its visual areas.

    Parameters
    ----------
    volume_shape : tuple of int
        Grid (x, y, z).
    voxel_size_mm : float
    visual_fraction : float
        Share of brain voxels labelled visual, in (0, 1).
    rng : numpy.random.Generator

    Returns
    -------
    Anatomy
    """
    shape = np.asarray(volume_shape)
    centre = (shape - 1) / 2.0
    radii = 0.40 * shape * rng.uniform(0.95, 1.0, size=3)
    i, j, k = np.meshgrid(*[np.arange(n) for n in volume_shape], indexing="ij")
    x, y, z = (i - centre[0]) / radii[0], (j - centre[1]) / radii[1], (k - centre[2]) / radii[2]
    brain_mask = x ** 2 + y ** 2 + z ** 2 <= 1.0
    # Posterior first; the curved term bends the area borders like the occipital pole.
    posterior_rank = y + 0.15 * z ** 2 + 0.1 * x ** 2
    area = np.zeros(volume_shape, dtype=np.int8)
    ranks = posterior_rank[brain_mask]
    visual_cut = np.quantile(ranks, visual_fraction)
    visual = brain_mask & (posterior_rank <= visual_cut)
    depth = np.zeros(volume_shape)
    visual_ranks = posterior_rank[visual]
    depth[visual] = np.argsort(np.argsort(visual_ranks)) / max(len(visual_ranks) - 1, 1)
    dorsal = k > centre[2]
    lateral = np.abs(x) > 0.45
    start = 0.0
    for index, name in enumerate(("V1", "V2", "V3")):
        stop = start + _EARLY_EXTENT[name]
        area[visual & (depth >= start) & (depth < stop)] = index + 1
        start = stop
    later = visual & (depth >= start)
    front = depth >= start + 0.45 * (1.0 - start)
    area[later & dorsal] = AREAS.index("LOC") + 1
    area[later & ~dorsal & ~front] = AREAS.index("hV4") + 1
    area[later & ~dorsal & front & lateral] = AREAS.index("FFA") + 1
    area[later & ~dorsal & front & ~lateral] = AREAS.index("PPA") + 1
    affine = np.diag([voxel_size_mm] * 3 + [1.0])
    affine[:3, 3] = -centre * voxel_size_mm
    return Anatomy(brain_mask, area, i < centre[0], dorsal, affine)


def roi_masks(anatomy):
    """ds001506-style ROI masks per hemisphere.

    Parameters
    ----------
    anatomy : Anatomy

    Returns
    -------
    dict of str to ndarray of bool
        Keys ``LH_V1d`` … ``RH_HVC`` (see :data:`ROI_NAMES`); HVC is LOC ∪ FFA ∪ PPA.
    """
    def in_area(*names):
        return np.isin(anatomy.area, [AREAS.index(name) + 1 for name in names])

    masks = {}
    for hemisphere, side in (("LH", anatomy.left), ("RH", ~anatomy.left)):
        for roi in ROI_NAMES:
            if roi in _ROI_UNIONS:
                masks[f"{hemisphere}_{roi}"] = side & in_area(*_ROI_UNIONS[roi])
            elif roi[-1] in "dv":
                half = anatomy.dorsal if roi[-1] == "d" else ~anatomy.dorsal
                masks[f"{hemisphere}_{roi}"] = side & in_area(roi[:-1]) & half
            else:
                masks[f"{hemisphere}_{roi}"] = side & in_area(roi)
    return masks


def _prf_positions(tuning, left, dorsal, rng):
    """pRF centres in degrees: contralateral hemifield, dorsal → lower field."""
    n_voxels = len(left)
    low, high = tuning.eccentricity_range
    # More voxels near the fovea (cortical magnification).
    eccentricity = low + (high - low) * rng.uniform(0, 1, n_voxels) ** 1.6
    angle = rng.uniform(0, np.pi / 2, n_voxels)
    x_deg = np.where(left, 1, -1) * eccentricity * np.cos(angle)
    y_deg = np.where(dorsal, -1, 1) * eccentricity * np.sin(angle)
    return x_deg, y_deg, eccentricity


def _energy_tuning(tuning, sigma_px, rng):
    """Per-voxel weights over the energy channels: a scale preference and orientation tuning."""
    n_voxels = len(sigma_px)
    wavelengths = np.log2(np.asarray(GABOR_WAVELENGTHS_PX))
    preferred = np.log2(np.clip(2.0 * sigma_px * tuning.scale_preference, 2.0, 24.0))
    preferred = preferred + rng.normal(0, 0.3, n_voxels)
    scale_weights = np.exp(-((preferred[:, None] - wavelengths[None]) ** 2) / (2 * 0.8 ** 2))
    preferred_orientation = rng.uniform(0, np.pi, n_voxels)
    orientations = np.asarray(GABOR_ORIENTATIONS)
    orientation_weights = 1.0 + tuning.orientation_bias * np.cos(
        2 * (orientations[None] - preferred_orientation[:, None]))
    weights = scale_weights[:, :, None] * orientation_weights[:, None, :]
    weights = weights.reshape(n_voxels, len(ENERGY_CHANNELS))
    return weights / weights.sum(axis=1, keepdims=True)


def make_voxel_model(anatomy, rng):
    """Draw the encoding model of every visual voxel.

    Parameters
    ----------
    anatomy : Anatomy
    rng : numpy.random.Generator

    Returns
    -------
    VoxelModel
        Voxels in the C order of ``anatomy.visual_mask``.
    """
    area = anatomy.area[anatomy.visual_mask].astype(int) - 1
    left = anatomy.left[anatomy.visual_mask]
    dorsal = anatomy.dorsal[anatomy.visual_mask]
    n_voxels = len(area)
    fields = {name: np.zeros(n_voxels) for name in (
        "prf_x", "prf_y", "prf_sigma", "luminance_weight", "red_green_weight",
        "blue_yellow_weight", "magnitude_weight", "energy_weight", "exponent", "gain",
        "imagery_gain")}
    energy_tuning = np.zeros((n_voxels, len(ENERGY_CHANNELS)))
    degrees_per_px = 2 * FIELD_HALF_WIDTH_DEG / MODEL_SIZE
    for index, name in enumerate(AREAS):
        tuning = AREA_TUNING[name]
        members = np.flatnonzero(area == index)
        count = len(members)
        x_deg, y_deg, eccentricity = _prf_positions(tuning, left[members], dorsal[members], rng)
        sigma_deg = (tuning.sigma_at_fovea + tuning.sigma_per_degree * eccentricity)
        sigma_deg = sigma_deg * rng.lognormal(0, 0.15, count)
        fields["prf_x"][members] = x_deg / FIELD_HALF_WIDTH_DEG
        fields["prf_y"][members] = y_deg / FIELD_HALF_WIDTH_DEG
        fields["prf_sigma"][members] = sigma_deg / FIELD_HALF_WIDTH_DEG
        fields["luminance_weight"][members] = rng.normal(0, tuning.luminance, count)
        fields["red_green_weight"][members] = rng.normal(0, tuning.colour_opponency, count)
        fields["blue_yellow_weight"][members] = rng.normal(0, 0.7 * tuning.colour_opponency, count)
        fields["magnitude_weight"][members] = tuning.colour_magnitude * rng.uniform(0.5, 1.5, count)
        fields["exponent"][members] = rng.uniform(*tuning.exponent_range, count)
        fields["gain"][members] = tuning.response_gain * rng.lognormal(0, 0.35, count)
        fields["imagery_gain"][members] = tuning.imagery_gain * rng.uniform(0.7, 1.3, count)
        fields["energy_weight"][members] = tuning.energy * rng.uniform(0.5, 1.5, count)
        energy_tuning[members] = _energy_tuning(tuning, sigma_deg / degrees_per_px, rng)
    return VoxelModel(area=area, energy_tuning=energy_tuning, **fields)


def _prf_matrix(model, size):
    """Normalised Gaussian pRF weights, shape (n_voxels, size * size), float32."""
    coords = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    x, y = np.meshgrid(coords, -coords, indexing="xy")
    # A pRF is never narrower than about a pixel, or it would miss the grid.
    sigma = np.maximum(model.prf_sigma, 1.0 / size)[:, None]
    squared = (x.ravel()[None] - model.prf_x[:, None]) ** 2 + (y.ravel()[None] - model.prf_y[:, None]) ** 2
    weights = np.exp(-squared / (2 * sigma ** 2))
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def _pool(maps, prf):
    """Pool every channel through every pRF: (n_images, n_channels, n_voxels)."""
    n_images, n_channels = maps.shape[:2]
    flat = maps.reshape(n_images * n_channels, -1).astype(np.float32)
    return (flat @ prf.T).reshape(n_images, n_channels, -1).astype(np.float64)


def model_drive(model, maps, reference):
    """Raw encoding-model drive of each visual voxel to each image.

    Parameters
    ----------
    model : VoxelModel
    maps : ndarray, shape (n_images, n_channels, size, size)
        From :func:`bidsrecon.simulate.features.feature_maps`.
    reference : ndarray of bool, shape (n_images,)
        Images whose statistics scale each pooled channel.

    Returns
    -------
    ndarray, shape (n_images, n_voxels)
        Zero for a blank grey screen.
    """
    pooled = _pool(maps, _prf_matrix(model, maps.shape[-1]))
    luminance, red_green, blue_yellow = (
        pooled[:, CHANNELS.index(name)] / (pooled[reference, CHANNELS.index(name)].std(axis=0) + 1e-6)
        for name in ("luminance", "red_green", "blue_yellow"))
    signed = (model.luminance_weight * luminance + model.red_green_weight * red_green
              + model.blue_yellow_weight * blue_yellow)
    first_energy = CHANNELS.index(ENERGY_CHANNELS[0])
    energy = np.einsum("ncv,vc->nv", pooled[:, first_energy:], model.energy_tuning)
    magnitude = pooled[:, CHANNELS.index(MAGNITUDE_CHANNEL)]
    positive = (model.energy_weight * energy / (energy[reference].mean(axis=0) + 1e-6)
                + model.magnitude_weight * magnitude / (magnitude[reference].mean(axis=0) + 1e-6))
    return signed + positive ** model.exponent


def stimulus_responses(model, maps, reference):
    """Steady-state BOLD response of each visual voxel to each image, in percent signal.

    Each voxel's drive is scaled so that its SD over the reference images equals its
    gain; a blank grey screen (rest) gives zero.

    Parameters
    ----------
    model : VoxelModel
    maps : ndarray, shape (n_images, n_channels, size, size)
    reference : ndarray of bool, shape (n_images,)

    Returns
    -------
    ndarray, shape (n_images, n_voxels)
    """
    drive = model_drive(model, maps, reference)
    return drive * (model.gain / (drive[reference].std(axis=0) + 1e-9))


def t1w_volume(anatomy, rng, upsample=2):
    """A plain T1-weighted head on a grid ``upsample`` times finer than the functional one.

    White matter bright, a grey-matter rim, a dark skull and a bright scalp: enough to
    look like an anatomy, not a model of one.

    Parameters
    ----------
    anatomy : Anatomy
    rng : numpy.random.Generator
    upsample : int

    Returns
    -------
    volume : ndarray, float
    affine : ndarray, shape (4, 4)
    """
    brain = zoom(anatomy.brain_mask.astype(float), upsample, order=1, grid_mode=True,
                 mode="grid-constant") > 0.5
    depth = distance_transform_edt(brain)
    outside = distance_transform_edt(~brain)
    volume = np.full(brain.shape, 10.0)
    volume[(outside > 0) & (outside <= 1.5)] = 80.0
    volume[(outside > 1.5) & (outside <= 3.5)] = 650.0
    volume[brain] = np.where(depth[brain] <= 2.0, 550.0, 800.0)
    volume = gaussian_filter(volume, 0.7) + rng.normal(0, 12.0, brain.shape)
    # Fine voxel centres sit symmetrically inside each coarse voxel.
    to_coarse = np.diag([1.0 / upsample] * 3 + [1.0])
    to_coarse[:3, 3] = (1.0 / upsample - 1.0) / 2.0
    return np.clip(volume, 0, None), anatomy.affine @ to_coarse
