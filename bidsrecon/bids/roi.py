"""Regions of interest: ``--roi NAME=PATH`` masks and ds001506's ``sourcedata`` masks by name.

ds001506 ships per-hemisphere masks on the EPI grid as
``sourcedata/sub-XX/anat/sub-XX_mask_{LH,RH}_{V1d,V1v,V2d,V2v,V3d,V3v,hV4,LOC,FFA,PPA,HVC}.nii.gz``
(REFERENCE.md §3). A name stands for the union of both hemispheres' files of its parts
(:data:`NAMED_ROIS`); ``LH_``/``RH_`` before a name keeps one hemisphere. Every mask asked for
is joined by union, moved onto the bold grid when it is not on it, and intersected with the
brain mask (:func:`build_roi_mask`).
"""
import itertools
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_INPUT_MISSING, BidsReconError
from bidsrecon.grid import same_grid

LOGGER = logging.getLogger("bidsrecon")

HEMISPHERES = ("LH", "RH")
_EARLY = ("V1d", "V1v", "V2d", "V2v", "V3d", "V3v")
# Name -> the sourcedata mask labels it joins. VC follows the lab's definition, V1-V3 + hV4 +
# HVC; LOC, FFA and PPA are listed as well: in ds001506 HVC already covers them, and listing
# them keeps their voxels should a subject's HVC file not be exactly their union.
NAMED_ROIS = {
    **{label: (label,) for label in _EARLY + ("hV4", "LOC", "FFA", "PPA", "HVC")},
    "V1": ("V1d", "V1v"),
    "V2": ("V2d", "V2v"),
    "V3": ("V3d", "V3v"),
    "VC": _EARLY + ("hV4", "HVC", "LOC", "FFA", "PPA"),
}
# A bold voxel joins an ROI drawn on another grid when at least this share of it lies inside.
RESAMPLE_THRESHOLD = 0.5
# Most sample points per axis and bold voxel when measuring that share (512 per voxel).
MAX_SUBSAMPLES = 8
# Grids whose affines differ by less than this (mm) are taken as the same grid.


@dataclass(frozen=True)
class RoiRequest:
    """One ``--roi`` value.

    Attributes
    ----------
    name : str
        The ROI's name (canonical spelling for named ROIs).
    path : str or None
        ``PATH`` of ``NAME=PATH`` (may contain ``{subject}``); None for a named sourcedata ROI.
    hemispheres : tuple of str
        For a named ROI, the hemispheres whose files it joins.
    """

    name: str
    path: str = None
    hemispheres: tuple = HEMISPHERES


def known_roi_names():
    """Names ``--roi`` accepts without a path (each also with ``LH_`` or ``RH_`` before it)."""
    return list(NAMED_ROIS)


def parse_rois(values):
    """Check the values of ``--roi``: ``NAME=PATH`` or a ds001506 ROI name.

    Parameters
    ----------
    values : iterable of str
        E.g. ``["V1", "RH_hV4", "mt=/data/rois/sub-{subject}_MT.nii.gz"]``. Names are matched
        without regard to case.

    Returns
    -------
    list of RoiRequest

    Raises
    ------
    BidsReconError
        Exit 64 for an empty name or path, or an unknown name (the message lists the known ones).
    """
    by_lower = {name.lower(): name for name in NAMED_ROIS}
    requests = []
    for value in values:
        name, separator, path = value.partition("=")
        if separator:
            if not name.strip() or not path.strip():
                raise BidsReconError(f"--roi {value!r}: expected NAME=PATH or a ROI name", EXIT_BAD_ARGUMENTS)
            requests.append(RoiRequest(name.strip(), path.strip()))
            continue
        prefix, _, rest = value.partition("_")
        hemispheres = HEMISPHERES
        if prefix.upper() in HEMISPHERES and rest:
            hemispheres, value = (prefix.upper(),), rest
        canonical = by_lower.get(value.lower())
        if canonical is None:
            raise BidsReconError(
                f"--roi {value!r}: unknown ROI name; known names: {', '.join(NAMED_ROIS)} (each also as "
                "LH_NAME or RH_NAME), or give your own mask as NAME=PATH", EXIT_BAD_ARGUMENTS)
        requests.append(RoiRequest(canonical, None, hemispheres))
    return requests


def roi_names(requests):
    """Each ROI as ``--roi`` names it, in its canonical spelling: ``V1``, ``LH_hV4``, ``NAME`` of ``NAME=PATH``.

    Parameters
    ----------
    requests : list of RoiRequest
        From :func:`parse_rois`.

    Returns
    -------
    list of str
    """
    return [request.name if request.path is not None or len(request.hemispheres) != 1
            else f"{request.hemispheres[0]}_{request.name}" for request in requests]


def sourcedata_mask_path(bids_dir, subject, hemisphere, label):
    """Where ds001506 keeps one mask: ``sourcedata/sub-XX/anat/sub-XX_mask_<HEMI>_<LABEL>.nii.gz``."""
    return Path(bids_dir) / "sourcedata" / f"sub-{subject}" / "anat" / f"sub-{subject}_mask_{hemisphere}_{label}.nii.gz"


def roi_files(requests, bids_dir, subject):
    """The mask files one subject's ROI is the union of.

    Parameters
    ----------
    requests : list of RoiRequest
        From :func:`parse_rois`.
    bids_dir : str or pathlib.Path
        Raw dataset root (its ``sourcedata/`` holds the named masks).
    subject : str
        Label without ``sub-``; replaces ``{subject}`` in user paths.

    Returns
    -------
    list of str
        Absolute paths, each once, in the order asked.

    Raises
    ------
    BidsReconError
        Exit 66 listing every file that is missing.
    """
    paths, missing = [], []
    for request in requests:
        if request.path is not None:
            candidates = [Path(request.path.replace("{subject}", subject)).expanduser()]
        else:
            candidates = [sourcedata_mask_path(bids_dir, subject, hemisphere, label)
                          for label in NAMED_ROIS[request.name] for hemisphere in request.hemispheres]
        for path in candidates:
            (paths if path.is_file() else missing).append(str(path.resolve()))
    if missing:
        raise BidsReconError(
            f"sub-{subject}: ROI mask file(s) not found: {', '.join(missing)}", EXIT_INPUT_MISSING)
    return list(dict.fromkeys(paths))


def _same_grid(image, shape, affine):
    return same_grid(image.shape, image.affine, shape, affine)


def _grid_text(shape, affine):
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    return f"{'x'.join(str(n) for n in shape)} voxels of {'x'.join(f'{z:g}' for z in zooms)} mm"


def coverage_on_grid(inside, source_affine, shape, affine):
    """Share of each voxel of a target grid that lies inside a mask on another grid.

    Each target voxel is sampled at ``n`` evenly spaced points per axis, with ``n`` the number
    of source voxels one target voxel spans along that axis (1 when the source is coarser, at
    most :data:`MAX_SUBSAMPLES`), each point taking the value of the source voxel it falls in.
    Unlike interpolating at the voxel centre, this counts every source voxel a target voxel
    covers when the mask comes from a finer grid.

    Parameters
    ----------
    inside : ndarray of bool, shape (x, y, z)
        The mask on its own grid.
    source_affine : ndarray, shape (4, 4)
    shape : tuple of int
        Target grid (x, y, z).
    affine : ndarray, shape (4, 4)
        Target grid's affine.

    Returns
    -------
    ndarray of float, shape ``shape``, values in [0, 1]
    """
    from scipy.ndimage import map_coordinates

    target_to_source = np.linalg.inv(source_affine) @ np.asarray(affine, dtype=np.float64)
    # Length, in source voxels, of one target voxel along each target axis.
    span = np.linalg.norm(target_to_source[:3, :3], axis=0)
    n_points = np.clip(np.ceil(span - 1e-6).astype(int), 1, MAX_SUBSAMPLES)
    centres = np.indices(shape, dtype=np.float64).reshape(3, -1)
    values = inside.astype(np.float32)
    total = np.zeros(centres.shape[1])
    for offset in itertools.product(*[(np.arange(n) + 0.5) / n - 0.5 for n in n_points]):
        points = target_to_source[:3, :3] @ (centres + np.array(offset)[:, None]) + target_to_source[:3, 3:]
        total += map_coordinates(values, points, order=0, mode="constant", cval=0.0)
    return (total / n_points.prod()).reshape(shape)


def roi_on_grid(path, shape, affine):
    """Read one ROI mask (voxels > 0) onto the bold grid.

    A mask on another grid (shape or affine) is moved onto the bold grid with a warning
    naming the file: a bold voxel joins the ROI when at least :data:`RESAMPLE_THRESHOLD` of it
    lies inside the mask (:func:`coverage_on_grid`), which keeps the ROI's volume where
    nearest-neighbour sampling would keep or drop whole voxels by chance. The move goes
    through the two affines only, so it is right only when both refer to the same world
    space: ds001506's masks are on its raw EPI grid, and fMRIPrep's ``T1w`` space matches that
    only as far as the head stayed put between sessions; a native mask in a template space
    (``MNI152…``) is wrong whatever the resampling.

    Parameters
    ----------
    path : str
    shape : tuple of int
        The bold grid's (x, y, z).
    affine : ndarray, shape (4, 4)

    Returns
    -------
    ndarray of bool, shape ``shape``

    Raises
    ------
    BidsReconError
        When the file is not a 3-D mask, or is empty before or after resampling.
    """
    image = nib.load(path)
    if len(image.shape) == 4 and image.shape[3] == 1:
        image = image.slicer[..., 0]
    if len(image.shape) != 3:
        raise BidsReconError(f"ROI mask {path}: expected a 3-D mask, got shape {image.shape}")
    inside = np.asanyarray(image.dataobj) > 0
    if not inside.any():
        raise BidsReconError(f"ROI mask {path} is empty (no voxel above 0)")
    if _same_grid(image, shape, affine):
        return inside
    warnings.warn(
        f"ROI mask {path} is not on the bold grid ({_grid_text(image.shape, image.affine)} vs "
        f"{_grid_text(shape, affine)}); resampled (bold voxels at least {RESAMPLE_THRESHOLD:g} inside kept)",
        stacklevel=2,
    )
    on_grid = coverage_on_grid(inside, image.affine, shape, affine) >= RESAMPLE_THRESHOLD
    if not on_grid.any():
        raise BidsReconError(
            f"ROI mask {path} is empty once resampled onto the bold grid ({_grid_text(shape, affine)}): "
            f"it covers no bold voxel to {RESAMPLE_THRESHOLD:g}; check that it is in the bold's space")
    return on_grid


def build_roi_mask(reference_file, brain_mask_file, roi_paths):
    """The analysis mask: the union of the ROI masks, within the brain mask.

    Intersecting with the brain mask keeps voxels outside the brain, where an ROI drawn on
    another image or resampled from another grid may spill, from entering the samples as
    signal-free (often constant zero) columns. Without ROI files the brain mask is returned.

    Parameters
    ----------
    reference_file : str
        A bold series or mask on the bold grid (only its header is read).
    brain_mask_file : str
        Brain mask on the bold grid (fMRIPrep's ``desc-brain_mask`` or one computed from the data).
    roi_paths : sequence of str
        ROI masks (:func:`roi_files`), any grid.

    Returns
    -------
    mask : nibabel.Nifti1Image
        uint8, 1 inside, on the reference grid.
    summary : dict
        ``roi_voxels`` (union on the bold grid), ``mask_voxels`` (after the intersection) and
        ``resampled`` (the ROI files that were not on the bold grid).

    Raises
    ------
    BidsReconError
        When the brain mask is not on the bold grid, or a ROI, or the final mask, is empty.
    """
    reference = nib.load(reference_file)
    shape, affine = reference.shape[:3], reference.affine
    brain_image = nib.load(brain_mask_file)
    if not _same_grid(brain_image, shape, affine):
        raise BidsReconError(
            f"brain mask {brain_mask_file} ({_grid_text(brain_image.shape[:3], brain_image.affine)}) is not on "
            f"the grid of {reference_file} ({_grid_text(shape, affine)})")
    brain = np.asanyarray(brain_image.dataobj).reshape(shape) > 0
    resampled = []
    if roi_paths:
        roi = np.zeros(shape, dtype=bool)
        for path in roi_paths:
            if not _same_grid(nib.load(path), shape, affine):
                resampled.append(str(path))
            roi |= roi_on_grid(path, shape, affine)
        final = roi & brain
        if not final.any():
            raise BidsReconError(
                f"the ROI ({roi.sum()} voxels from {', '.join(map(str, roi_paths))}) has no voxel inside the "
                f"brain mask {brain_mask_file}")
        if (roi & ~brain).any():
            LOGGER.info("ROI: %d of %d voxels lie outside the brain mask and are left out",
                        int((roi & ~brain).sum()), int(roi.sum()))
    else:
        roi = final = brain
        if not final.any():
            raise BidsReconError(f"brain mask {brain_mask_file} is empty")
    mask = nib.Nifti1Image(final.astype(np.uint8), affine)
    mask.header.set_xyzt_units("mm")
    summary = {"roi_voxels": int(roi.sum()), "mask_voxels": int(final.sum()), "resampled": resampled}
    return mask, summary
