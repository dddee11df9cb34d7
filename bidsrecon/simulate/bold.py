"""BOLD time series of one run: haemodynamics, drift, global signal, head motion and noise.

The order of operations (what a scanner would see):

1. evoked percent-signal change of each visual voxel = event amplitudes convolved with
   a canonical double-gamma HRF, sampled at each slice's acquisition time;
2. plus a slow drift per voxel and a global signal shared by the whole brain;
3. times the voxel's baseline intensity;
4. head motion: each volume moved rigidly (sub-voxel shifts, linear interpolation) —
   skipped for the motion-free volumes that stand in for fMRIPrep's output;
5. plus Gaussian measurement noise, the same draw for both versions.
"""
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import affine_transform
from scipy.signal import fftconvolve
from scipy.stats import gamma

# Resolution of the neural time course before it is sampled at slice times.
FINE_DT = 0.1
MEAN_BRAIN_INTENSITY = 1000.0
OUTSIDE_INTENSITY = 40.0
# Radius (mm) at which a rotation moves a point as far as the same number of mm
# of translation; Power et al. (2012) use 50 mm for framewise displacement.
HEAD_RADIUS_MM = 50.0
DRIFT_PERCENT = 1.0
GLOBAL_PERCENT = 0.5


@dataclass(frozen=True)
class RunSignal:
    """Volumes of one run, shape (x, y, z, t), as float intensities.

    Attributes
    ----------
    raw : ndarray
        With head motion.
    motion_free : ndarray
        Same signal and noise without head motion.
    motion : ndarray, shape (t, 6)
        trans_x, trans_y, trans_z (mm), rot_x, rot_y, rot_z (rad) of each volume.
    """

    raw: np.ndarray
    motion_free: np.ndarray
    motion: np.ndarray


def double_gamma_hrf(dt, duration=32.0):
    """Canonical double-gamma HRF (peak ~5 s, undershoot ~15 s, ratio 1/6), unit integral.

    With unit integral a sustained unit input settles at a response of one, so event
    amplitudes are steady-state percent-signal changes.
    """
    times = np.arange(0.0, duration, dt)
    response = gamma.pdf(times, 6.0) - gamma.pdf(times, 16.0) / 6.0
    return response / (response.sum() * dt)


def slice_offsets(n_slices, tr):
    """Acquisition time of each slice within a volume: sequential ascending."""
    return np.arange(n_slices) * tr / n_slices


def event_regressors(onsets, durations, n_volumes, tr, offsets):
    """HRF-convolved unit boxcars sampled when each slice is acquired.

    Parameters
    ----------
    onsets, durations : array-like of float, shape (n_events,)
        Seconds.
    n_volumes : int
    tr : float
    offsets : ndarray, shape (n_slices,)
        From :func:`slice_offsets`.

    Returns
    -------
    ndarray, shape (n_slices, n_volumes, n_events)
    """
    n_fine = int(round(n_volumes * tr / FINE_DT)) + 1
    boxcars = np.zeros((n_fine, len(onsets)))
    for column, (onset, duration) in enumerate(zip(onsets, durations)):
        boxcars[int(round(onset / FINE_DT)):int(round((onset + duration) / FINE_DT)), column] = 1.0
    hrf = double_gamma_hrf(FINE_DT)
    convolved = fftconvolve(boxcars, hrf[:, None], axes=0)[:n_fine] * FINE_DT
    times = np.arange(n_volumes)[None, :] * tr + offsets[:, None]
    return convolved[np.round(times / FINE_DT).astype(int)]


def evoked_signal(regressors, amplitudes, voxel_slices):
    """Evoked percent-signal change of each voxel.

    Parameters
    ----------
    regressors : ndarray, shape (n_slices, n_volumes, n_events)
    amplitudes : ndarray, shape (n_events, n_voxels)
    voxel_slices : ndarray of int, shape (n_voxels,)
        Slice (z index) of each voxel.

    Returns
    -------
    ndarray, shape (n_volumes, n_voxels)
    """
    signal = np.zeros((regressors.shape[1], amplitudes.shape[1]))
    for index in np.unique(voxel_slices):
        in_slice = voxel_slices == index
        signal[:, in_slice] = regressors[index] @ amplitudes[:, in_slice]
    return signal


def baseline_intensity(brain_mask, rng):
    """Mean image: a smooth bias field over the brain, dim background outside."""
    shape = np.asarray(brain_mask.shape)
    coords = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    field = 1.0 + sum(rng.normal(0, 0.05) * axis for axis in coords)
    return np.where(brain_mask, MEAN_BRAIN_INTENSITY * field, OUTSIDE_INTENSITY)


def motion_parameters(n_volumes, motion_mm, rng):
    """Smooth random-walk head motion, starting at zero.

    Parameters
    ----------
    n_volumes : int
    motion_mm : float
        Largest translation; rotations reach ``motion_mm / 50 mm`` radians.
    rng : numpy.random.Generator

    Returns
    -------
    ndarray, shape (n_volumes, 6)
        trans_x, trans_y, trans_z (mm), rot_x, rot_y, rot_z (rad).
    """
    walk = np.cumsum(rng.standard_normal((n_volumes, 6)), axis=0)
    walk -= walk[0]
    walk /= np.maximum(np.abs(walk).max(axis=0), 1e-12)
    scale = motion_mm * rng.uniform(0.3, 1.0, size=6)
    scale[3:] /= HEAD_RADIUS_MM
    return walk * scale


def _rotation(angles):
    # Kept independent of bidsrecon.preproc.motion on purpose: the motion tests compare the two.
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    about_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    about_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    about_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return about_z @ about_y @ about_x


def move_volumes(volumes, motion, voxel_size_mm):
    """Move each volume rigidly about the grid centre.

    Parameters
    ----------
    volumes : ndarray, shape (x, y, z, t)
    motion : ndarray, shape (t, 6)
    voxel_size_mm : float

    Returns
    -------
    ndarray, shape (x, y, z, t)
    """
    centre = (np.asarray(volumes.shape[:3]) - 1) / 2.0
    moved = np.empty_like(volumes)
    for index in range(volumes.shape[3]):
        rotation = _rotation(motion[index, 3:])
        shift = motion[index, :3] / voxel_size_mm
        # Output voxel o shows the head point R^T (o - c - shift) + c.
        offset = centre - rotation.T @ (centre + shift)
        moved[..., index] = affine_transform(
            volumes[..., index], rotation.T, offset=offset, order=1, mode="nearest")
    return moved


def _smooth_series(n_volumes, rng, correlation=0.9):
    series = np.zeros(n_volumes)
    innovations = rng.standard_normal(n_volumes)
    for index in range(1, n_volumes):
        series[index] = correlation * series[index - 1] + innovations[index]
    return (series - series.mean()) / (series.std() + 1e-12)


def nuisance_signal(n_volumes, n_voxels, rng):
    """Percent-signal drift (linear + slow cosines) per voxel plus a shared global signal."""
    time = (np.arange(n_volumes) + 0.5) / n_volumes
    basis = np.stack([time - 0.5] + [np.cos(np.pi * order * time) for order in (1, 2, 3)], axis=1)
    weights = rng.normal(0, DRIFT_PERCENT, (4, n_voxels)) / np.array([0.5, 1, 2, 3])[:, None]
    global_signal = GLOBAL_PERCENT * _smooth_series(n_volumes, rng)
    loading = rng.uniform(0.6, 1.4, n_voxels)
    return basis @ weights + global_signal[:, None] * loading[None]


def simulate_run(brain_mask, visual_mask, baseline, evoked, noise_percent, motion_mm,
                 voxel_size_mm, rng):
    """Assemble the volumes of one run.

    Parameters
    ----------
    brain_mask, visual_mask : ndarray of bool, shape (x, y, z)
    baseline : ndarray, shape (x, y, z)
        From :func:`baseline_intensity`.
    evoked : ndarray, shape (t, n_visual_voxels)
        Percent-signal change of the visual voxels, C order of ``visual_mask``.
    noise_percent : float
        Measurement-noise SD in percent of each brain voxel's baseline.
    motion_mm : float
    voxel_size_mm : float
    rng : numpy.random.Generator

    Returns
    -------
    RunSignal
    """
    n_volumes = evoked.shape[0]
    percent = np.zeros((n_volumes,) + brain_mask.shape)
    percent[:, brain_mask] = nuisance_signal(n_volumes, int(brain_mask.sum()), rng)
    percent[:, visual_mask] += evoked
    intensity = np.moveaxis(baseline * (1.0 + percent / 100.0), 0, -1)
    noise_scale = np.where(brain_mask, baseline, MEAN_BRAIN_INTENSITY) * noise_percent / 100.0
    noise = rng.standard_normal(intensity.shape) * noise_scale[..., None]
    motion = motion_parameters(n_volumes, motion_mm, rng)
    raw = move_volumes(intensity, motion, voxel_size_mm) + noise
    # Magnitude images are never negative (the dim background would dip below zero).
    return RunSignal(np.abs(raw), np.abs(intensity + noise), motion)
