"""Rigid-body head-motion estimation and correction of one 4-D run.

Conventions (fMRIPrep's column names and units; signs and rotation order as in the simulator):

- a volume's position is six parameters ``trans_x, trans_y, trans_z`` (mm) and ``rot_x, rot_y,
  rot_z`` (radians) of the map ``T(x) = R x + t`` from a point ``x`` of the reference volume to
  where that point is found in the volume, with ``R = Rz(rot_z) Ry(rot_y) Rx(rot_x)``;
- ``x`` is in mm along the voxel axes (first axis = x), relative to the centre of the grid,
  so the axes are the scanner's RAS axes whenever the affine has no rotation or flip.

Estimation is the inverse-compositional Gauss–Newton method of Baker & Matthews (2004,
"Lucas–Kanade 20 years on"): the reference and every volume are smoothed with the same Gaussian,
the reference's gradient gives a constant Jacobian, and each iteration resamples the volume
trilinearly at a sparse lattice of reference points (every ``sample_spacing_mm``, as SPM's
realign samples its points). Each volume starts from the previous volume's estimate, since heads
move little between volumes.

The volume's intensity is modelled as the reference's times a field linear in space,
``1 + a + b x + c y + d z``, fitted with the motion at every iteration. Plain least squares
mistakes intensity changes that are not motion (the global signal, and above all a large
region's activation) for motion, which biases the estimates in step with the task (Freire &
Mangin 2001, NeuroImage 14:709). On the demo preset's 28 simulated runs, whose visual cortex
fills the back of the brain, the field raised the worst correlation of trans_y with the truth
from 0.89 to 0.97; on the tiny preset's 12×12×8 grid, too small for a linear field and a shift
to look different, it lowered the worst translation's from 0.94 to 0.88
(``bench/motion_accuracy.py``).

Hostile input: motion cannot be measured against a reference volume without structure (all zero,
all NaN, constant): every step of the Gauss–Newton method would be 0 and every run would look
still. `reference_volume_problem` says why a volume cannot serve, and `estimate_motion` raises
rather than return zeros. Refusing such a reference before the run, and the voxels without data,
are `bidsrecon.preproc.motion_checks`'s.
"""
import numpy as np
from scipy.ndimage import affine_transform, gaussian_filter, map_coordinates
from threadpoolctl import threadpool_limits

MOTION_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
# Radius (mm) at which rotations count as displacement: Power et al. (2012) and fMRIPrep use 50 mm.
HEAD_RADIUS_MM = 50.0
_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
# Derivatives of R at zero with respect to rot_x, rot_y, rot_z.
_GENERATORS = np.array([
    [[0, 0, 0], [0, 0, -1], [0, 1, 0]],
    [[0, 0, 1], [0, 0, 0], [-1, 0, 0]],
    [[0, -1, 0], [1, 0, 0], [0, 0, 0]],
], dtype=np.float64)


def rotation_matrix(angles):
    """``Rz @ Ry @ Rx`` for angles (rot_x, rot_y, rot_z) in radians."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    about_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    about_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    about_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return about_z @ about_y @ about_x


def rigid_matrix(parameters):
    """4×4 homogeneous matrix of the six parameters (see the module docstring)."""
    matrix = np.eye(4)
    matrix[:3, :3] = rotation_matrix(parameters[3:])
    matrix[:3, 3] = parameters[:3]
    return matrix


def rigid_parameters(matrix):
    """Inverse of `rigid_matrix`: the six parameters of a 4×4 rigid matrix."""
    rotation = matrix[:3, :3]
    rot_y = np.arcsin(np.clip(-rotation[2, 0], -1.0, 1.0))
    rot_x = np.arctan2(rotation[2, 1], rotation[2, 2])
    rot_z = np.arctan2(rotation[1, 0], rotation[0, 0])
    return np.concatenate([matrix[:3, 3], [rot_x, rot_y, rot_z]])


def _smooth(volume, zooms, fwhm_mm):
    sigma = fwhm_mm / _FWHM_PER_SIGMA / np.asarray(zooms, dtype=np.float64)
    volume = np.asarray(volume, dtype=np.float32)
    if not np.isfinite(volume).all():  # a NaN would spread over the whole smoothed volume
        volume = np.where(np.isfinite(volume), volume, np.float32(0))
    return gaussian_filter(volume, sigma, mode="nearest")


def _sample_points(shape, zooms, spacing_mm):
    """Voxel indices of a lattice every ``spacing_mm`` (at least every voxel), shape (3, n)."""
    strides = [max(1, int(round(spacing_mm / zoom))) for zoom in zooms]
    axes = [np.arange(stride // 2, size, stride) for size, stride in zip(shape, strides)]
    return np.stack([grid.ravel() for grid in np.meshgrid(*axes, indexing="ij")]).astype(np.float64)


class _Reference:
    """What the inverse-compositional method precomputes from the smoothed reference."""

    def __init__(self, smoothed, zooms, spacing_mm):
        self.shape = np.asarray(smoothed.shape)
        self.zooms = np.asarray(zooms, dtype=np.float64)
        self.centre = (self.shape - 1) / 2.0
        indices = _sample_points(smoothed.shape, zooms, spacing_mm)
        self.points_mm = (indices - self.centre[:, None]) * self.zooms[:, None]
        self.values = smoothed[tuple(indices.astype(int))].astype(np.float64)
        gradient = np.stack([
            np.gradient(smoothed, axis=axis)[tuple(indices.astype(int))] / zoom
            for axis, zoom in enumerate(self.zooms)
        ])  # (3, n), intensity per mm
        rotation_columns = [np.einsum("in,in->n", gradient, generator @ self.points_mm)
                            for generator in _GENERATORS]
        # Steepest-descent images d(reference)/d(parameter) of the six motion parameters, then the
        # intensity field's four (reference x 1, x, y, z; positions in units of 50 mm): (n, 10).
        field = np.vstack([np.ones(self.points_mm.shape[1]), self.points_mm / HEAD_RADIUS_MM])
        self.jacobian = np.column_stack([gradient.T] + rotation_columns + list(self.values * field))

    def determines_motion(self):
        """Whether the sampled reference has the structure to determine all six motion parameters."""
        motion_columns = self.jacobian[:, :6]
        return bool(np.isfinite(motion_columns).all()) and np.linalg.matrix_rank(motion_columns) == 6

    def voxel_indices(self, matrix):
        """Where the sample points fall in a volume at position ``matrix``, in voxels."""
        moved_mm = matrix[:3, :3] @ self.points_mm + matrix[:3, 3:4]
        return moved_mm / self.zooms[:, None] + self.centre[:, None]


def _register_volume(smoothed, reference, start, max_iterations, tolerance_mm):
    """Six parameters of one smoothed volume relative to the reference (Gauss–Newton)."""
    matrix = rigid_matrix(start)
    for _ in range(max_iterations):
        indices = reference.voxel_indices(matrix)
        # Points that leave the grid carry no information about this volume.
        inside = np.all((indices >= 0) & (indices <= reference.shape[:, None] - 1), axis=0)
        values = map_coordinates(smoothed, indices[:, inside], order=1, prefilter=False)
        # The field enters linearly, so it is fitted afresh each time; only the motion is a step.
        step = np.linalg.lstsq(reference.jacobian[inside], values - reference.values[inside], rcond=None)[0][:6]
        matrix = matrix @ np.linalg.inv(rigid_matrix(step))
        if np.abs(step[:3]).max() + HEAD_RADIUS_MM * np.abs(step[3:]).max() < tolerance_mm:
            break
    return rigid_parameters(matrix)


def estimate_motion(volumes, zooms, reference_index=None, fwhm_mm=3.0, sample_spacing_mm=4.0,
                    max_iterations=30, tolerance_mm=1e-3, reference_volume=None):
    """Estimate the rigid-body position of every volume relative to a reference volume.

    Parameters
    ----------
    volumes : ndarray, shape (x, y, z, t)
    zooms : sequence of float
        Voxel size (mm) along x, y, z.
    reference_index : int, optional
        Volume that defines the reference position; default the middle one (as FSL's MCFLIRT),
        which is past any non-steady-state volumes at the start. With ``reference_volume`` it is
        only where the estimation starts.
    reference_volume : ndarray, shape (x, y, z), optional
        A volume on the same grid to register every volume to instead (for example the mean of
        another run), so that runs of different sessions end up in one position.
    fwhm_mm : float
        Smoothing applied to the reference and to every volume before matching. SPM uses 5 mm;
        on the simulated runs (3-mm voxels) 2-3 mm recovered the motion better than 4-7 mm.
    sample_spacing_mm : float
        Spacing of the lattice of matched points (SPM: 4 mm).
    max_iterations : int
        Gauss–Newton iterations per volume at most.
    tolerance_mm : float
        Stop when the last update moves no point within 50 mm of the centre by more than this.

    Returns
    -------
    ndarray, shape (t, 6)
        trans_x, trans_y, trans_z (mm), rot_x, rot_y, rot_z (rad); the reference volume's row is
        zero up to the tolerance.
    """
    volumes = np.asarray(volumes)
    if volumes.ndim != 4:
        raise ValueError(f"volumes must be 4-D (x, y, z, t); got shape {volumes.shape}")
    n_volumes = volumes.shape[3]
    if reference_index is None:
        reference_index = n_volumes // 2
    if not 0 <= reference_index < n_volumes:
        raise ValueError(f"reference_index must be in [0, {n_volumes - 1}]; got {reference_index}")
    target = volumes[..., reference_index] if reference_volume is None else np.asarray(reference_volume)
    if target.shape != volumes.shape[:3]:
        raise ValueError(f"reference_volume has shape {target.shape}; the volumes are {volumes.shape[:3]}")
    reference = _Reference(_smooth(target, zooms, fwhm_mm), zooms, sample_spacing_mm)
    if not reference.determines_motion():
        raise ValueError("the reference volume has too little structure (constant, all zero or all NaN?) to "
                         "measure motion against: every estimate would be 0")
    motion = np.zeros((n_volumes, 6))
    # The least-squares problems are tall and thin: BLAS threads only add contention (tens of
    # times slower on a loaded machine).
    with threadpool_limits(limits=1):
        # Walk outwards from the reference so that each volume starts from its neighbour's estimate.
        for order in (range(reference_index, n_volumes), range(reference_index, -1, -1)):
            start = np.zeros(6)
            for index in order:
                smoothed = _smooth(volumes[..., index], zooms, fwhm_mm)
                motion[index] = start = _register_volume(smoothed, reference, start, max_iterations,
                                                         tolerance_mm)
    return motion


def resample_volume(volume, parameters, zooms):
    """Resample one volume onto the reference position (trilinear; edges repeat the border).

    Parameters
    ----------
    volume : ndarray, shape (x, y, z)
    parameters : ndarray, shape (6,)
        The volume's position, from `estimate_motion`.
    zooms : sequence of float

    Returns
    -------
    ndarray, shape (x, y, z), float32
    """
    zooms = np.asarray(zooms, dtype=np.float64)
    centre = (np.asarray(volume.shape) - 1) / 2.0
    matrix = rigid_matrix(parameters)
    # Output voxel o reads the volume at  Z^-1 (R Z (o - c) + t) + c  (Z = diag(zooms)).
    linear = matrix[:3, :3] * zooms[None, :] / zooms[:, None]
    offset = centre + matrix[:3, 3] / zooms - linear @ centre
    return affine_transform(np.asarray(volume, dtype=np.float32), linear, offset=offset, order=1,
                            mode="nearest")


def framewise_displacement(motion):
    """Framewise displacement (Power et al. 2012): NaN for the first volume.

    Parameters
    ----------
    motion : ndarray, shape (t, 6)

    Returns
    -------
    ndarray, shape (t,)
        Sum of the absolute changes from the previous volume, rotations as arc length at 50 mm.
    """
    steps = np.abs(np.diff(motion, axis=0))
    displacement = steps[:, :3].sum(axis=1) + HEAD_RADIUS_MM * steps[:, 3:].sum(axis=1)
    return np.concatenate([[np.nan], displacement])


def reference_volume_problem(volume, zooms, fwhm_mm=3.0, sample_spacing_mm=4.0):
    """Why head motion cannot be measured against ``volume``, as a phrase; None when it can.

    NaN and infinite voxels count as 0, as `zero_nonfinite_voxels` sets them before the
    realignment. Refused: a volume with no finite voxel, a constant one (all zero included), and
    one whose smoothed image, sampled as `estimate_motion` samples it, does not determine the six
    motion parameters (for example a single bright voxel between the sample points).

    Parameters
    ----------
    volume : ndarray, shape (x, y, z)
    zooms : sequence of float
        Voxel size (mm); ``fwhm_mm`` and ``sample_spacing_mm`` as in `estimate_motion`.

    Returns
    -------
    str or None
        E.g. ``"is all zero"``, to follow the volume's name in a message.
    """
    volume = np.asarray(volume, dtype=np.float32)
    finite = np.isfinite(volume)
    if not finite.any():
        return "is entirely NaN or infinite"
    values = np.where(finite, volume, np.float32(0))
    low, high = float(values.min()), float(values.max())
    if low == high:
        if low == 0:
            return "is all zero" if finite.all() else "is all zero or NaN/infinite"
        return f"is constant (every voxel is {low:g})"
    reference = _Reference(_smooth(values, zooms, fwhm_mm), zooms, sample_spacing_mm)
    if not reference.determines_motion():
        return "has too little structure to measure motion against (the six motion parameters are undetermined)"
    return None
