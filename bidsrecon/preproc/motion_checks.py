"""Hostile input to motion correction: references motion cannot be measured against, and voxels
without data.

Motion cannot be measured against a reference volume without structure (all zero, all NaN,
constant): every step of the Gauss–Newton method of `bidsrecon.preproc.motion` would be 0 and
every run would look still. `check_reference_volume` (pre-flight, and `Realign`) refuses such a
reference naming the run (`reference_error`, from `bidsrecon.preproc.motion.reference_volume_problem`).
Voxels that are NaN or infinite in any volume of a raw run are set to 0 before the realignment
(`zero_nonfinite_voxels`), and the voxels of the realigned run that read them
(`contaminated_voxels`) are set to 0 in every volume, so that the brain mask and the samples
leave them out.
"""
import logging

import nibabel as nib
import numpy as np

from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_INPUT_MISSING, BidsReconError
from bidsrecon.preproc.motion import reference_volume_problem, resample_volume

LOGGER = logging.getLogger("nipype.interface")

_FIX_RUN = ("Replace the file with a correct conversion of the run (a failed conversion or an incomplete copy?), "
            "or leave the run out (--session-label, --bids-filter-file)")
_FIX_REFERENCE = ("Restore the reference volume (with --decoders-dir: the decoder's motion reference, saved with it "
                  "by the participant level that fitted it), or refit the decoder")


def check_reference_volume(path, run=None, mean=False, fix=None):
    """Refuse a motion reference that head motion cannot be measured against: one clear line.

    Called before the workflow starts (pre-flight) and again by `bidsrecon.interfaces.motion.Realign`
    on the volume it registers to, so that the check cannot be bypassed.

    Parameters
    ----------
    path : str or Path
        A NIfTI image. A raw 4-D run (``mean=False``): its middle volume, the reference that
        `Realign` registers the run to when it has no ``reference_file`` (the first training run,
        whose realigned mean every other run is registered to). A reference volume: 3-D, or 4-D
        with ``mean=True`` (its mean over time, as `Realign` reads ``reference_file``).
    run : str or Path, optional
        The bold run registered to ``path``, named first in the message; default ``path`` itself
        (a run's own middle volume).
    mean : bool
        A 4-D ``path`` is averaged over time instead of taking its middle volume.
    fix : str, optional
        What the user should do, ending the message; by default: replace or leave out the run
        (``path`` is the run) or restore the reference volume (``path`` is another file).

    Returns
    -------
    ndarray, shape (x, y, z), float32
        The reference volume as read (NaN left as they are).

    Raises
    ------
    BidsReconError
        Exit 66 when ``path`` cannot be read as a NIfTI image; exit 64 when it is not 3-D or 4-D,
        or its volume is entirely NaN/infinite, constant (all zero included), or without the
        structure to determine the motion (`reference_volume_problem`).
    """
    own = run is None or str(run) == str(path)
    try:
        image = nib.load(path)
        shape = image.shape
        if len(shape) == 4 and not mean:
            index = shape[3] // 2
            volume = np.asanyarray(image.dataobj[..., index], dtype=np.float32)
            what = f"its middle volume ({index + 1} of {shape[3]})"
        elif len(shape) in (3, 4):
            volume = np.asanyarray(image.dataobj, dtype=np.float32)
            volume = volume.mean(axis=3) if volume.ndim == 4 else volume
            what = "its mean over time" if len(shape) == 4 else "the volume"
    except BidsReconError:
        raise
    except Exception as error:  # nibabel raises several kinds for unreadable or truncated files
        raise BidsReconError(f"{path}: cannot be read as a NIfTI image ({error})", EXIT_INPUT_MISSING) from None
    if len(shape) not in (3, 4):
        raise BidsReconError(f"{path}: a motion reference must be a 3-D volume or a 4-D run; got shape {shape}",
                             EXIT_BAD_ARGUMENTS)
    problem = reference_volume_problem(volume, image.header.get_zooms()[:3])
    if problem:
        raise reference_error(path if own else run, what, problem, reference=None if own else path, fix=fix)
    return volume


def reference_error(run, what, problem, reference=None, fix=None):
    """The error (exit 64) for a motion reference that `reference_volume_problem` refused.

    ``run`` is the bold file; ``reference`` the reference file, None when it is ``run``'s own
    volume; ``what`` says which volume (``"its middle volume (5 of 10)"``).
    """
    subject = f"{run}: the motion reference, {what}," if reference is None else (
        f"{run}: its motion reference {reference} ({what})")
    return BidsReconError(
        f"{subject} {problem}, so no head motion can be measured against it (every run registered to it would "
        f"show none). {fix or (_FIX_RUN if reference is None else _FIX_REFERENCE)}", EXIT_BAD_ARGUMENTS)


def nonfinite_voxels(volumes):
    """Voxels that are NaN or infinite in any volume of a 4-D array: bool, shape (x, y, z)."""
    bad = np.zeros(volumes.shape[:3], dtype=bool)
    for index in range(volumes.shape[3]):  # a volume at a time: a full-size run is 670 MB in float32
        bad |= ~np.isfinite(volumes[..., index])
    return bad


def zero_nonfinite_voxels(volumes, run):
    """Set the voxels that are NaN or infinite in any volume to 0 in every volume, in place.

    One warning names the run and the count. Motion correction cannot use them (a NaN makes the
    least-squares fit fail: "SVD did not converge"), and their series are not data.

    Parameters
    ----------
    volumes : ndarray, shape (x, y, z, t), float, writable
    run : str or Path
        The bold file, for the messages.

    Returns
    -------
    ndarray of bool, shape (x, y, z)
        The voxels set to 0 (give them to `contaminated_voxels` after the realignment).

    Raises
    ------
    BidsReconError
        (exit 64) when every voxel is NaN or infinite in some volume: nothing is left to register.
    """
    bad = nonfinite_voxels(volumes)
    n_bad = int(bad.sum())
    if n_bad == bad.size:
        n_volumes = volumes.shape[3]
        empty = [index + 1 for index in range(n_volumes) if not np.isfinite(volumes[..., index]).any()]
        if len(empty) == n_volumes:
            detail = "every value is NaN or infinite: the run holds no data"
        else:
            shown = ", ".join(map(str, empty[:5])) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
            detail = (f"every voxel is NaN or infinite in at least one volume ({len(empty)} of {n_volumes} volumes "
                      f"entirely{': ' + shown if empty else ''}), so nothing is left to realign")
        raise BidsReconError(f"{run}: {detail}. {_FIX_RUN}", EXIT_BAD_ARGUMENTS)
    if n_bad:
        LOGGER.warning("%s: %d of %d voxels are NaN or infinite in at least one volume; they are set to 0 for motion "
                       "correction and left out of the brain mask and the samples", run, n_bad, bad.size)
        for index in range(volumes.shape[3]):
            volumes[..., index][bad] = 0
    return bad


def contaminated_voxels(bad, motion, zooms, threshold=1e-3):
    """The voxels of the realigned run that read a voxel of ``bad`` (or are one), in any volume.

    Parameters
    ----------
    bad : ndarray of bool, shape (x, y, z)
        Voxels of the raw run without data (`zero_nonfinite_voxels`).
    motion : ndarray, shape (t, 6)
        Each volume's position (`estimate_motion`), as given to `resample_volume`.
    zooms : sequence of float
    threshold : float
        Share of a realigned voxel's trilinear weights on ``bad`` voxels above which it counts.

    Returns
    -------
    ndarray of bool, shape (x, y, z)
    """
    touched = np.array(bad, dtype=bool)
    if not touched.any():
        return touched
    weights = touched.astype(np.float32)
    for parameters in np.unique(np.asarray(motion), axis=0):
        touched |= resample_volume(weights, parameters, zooms) > threshold
    return touched
