"""Pre-flight: open every input the participants' plans name, before any preprocessing, and list
every problem at once.

Why: a stimulus that is not an image (or is truncated, or a decompression bomb), a bold file cut
short by a failed copy, or two stimuli whose reconstructions would be written to the same file used
to be found mid-workflow or at the very last step, after all the preprocessing, with a traceback and
exit 1; and a header TR that disagrees with the JSON sidecar (the validator catches it, but may be
skipped) or overlapping trials passed without a word. Here they are found in seconds, all together:
one line per problem naming the file, what is wrong and the fix, nothing written to the output.

Checked here, on the plans of :func:`bidsrecon.participant_plan.plan_participant`:

- every stimulus file: decoded whole, at most :data:`bidsrecon.images.MAX_IMAGE_PIXELS`, a mode
  with a known conversion to RGB (:func:`bidsrecon.images.read_rgb`, the very function the workflow
  reads stimuli with);
- every bold file, ROI mask and fMRIPrep brain mask: its data complete on disk (a ``.nii.gz``'s
  gzip trailer records the length of what it decompresses to, compared with what the header
  needs; only when they differ is the file read to its last volume; a ``.nii``'s size). A bold's
  header TR (``pixdim[4]`` in its ``xyzt_units``) must equal the JSON ``RepetitionTime`` within
  :data:`TR_TOLERANCE_S`. Whether a bold reads as NIfTI and is 4-D is checked earlier, where the
  runs are collected (:func:`bidsrecon.bids.collect.bold_volumes`);
- the trials of each set in each run: no two at the same onset, none starting before the previous
  one ends (a sample would average the same volumes twice, or volumes of two images). Events files
  that are not UTF-8 or hold no row are refused where they are read
  (:func:`bidsrecon.bids.events.read_events`), before plans exist;
- raw input: the volume every run is realigned to (:func:`check_motion_reference`): an all-zero,
  constant or all-NaN reference would silently make every run's motion zero;
- output names: two stimuli of a participant's test sets whose file names
  (:func:`bidsrecon.bids.derivatives.item_stem`, letters and digits only) are the same.
- ``--features-dir``: every decoded layer a folder, every training stimulus a file in each, each
  file's features of the shape the encoder gives (read from the files' headers,
  :func:`bidsrecon.labformats.features.check_features`).

The error's exit code is 66 (input missing) when any problem is a file that cannot be read, else 64.
"""
import logging
import os
import zlib

import nibabel as nib
import numpy as np
import pandas as pd

from bidsrecon.bids.derivatives import item_stem
from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_INPUT_MISSING, BidsReconError
from bidsrecon.images import read_rgb
from bidsrecon.labformats.features import check_features
from bidsrecon.preproc.motion_checks import check_reference_volume
from bidsrecon.spec import TRAINING

LOGGER = logging.getLogger("bidsrecon")

#: How far the header's TR may be from the JSON's RepetitionTime, in seconds. The header stores a
#: float32 (2.0 s may read 1.9999999); a real disagreement is a different protocol, tenths of a second.
TR_TOLERANCE_S = 1e-3

#: Trials closer than this (s) count as touching, not overlapping (onsets written with rounding).
_OVERLAP_TOLERANCE_S = 1e-6

#: NIfTI time units (nibabel's names) and their length in seconds; others (Hz, ppm, rad) are no TR.
_TIME_UNITS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}


def preflight(plans, features=None):
    """Check every input of ``plans`` (see the module docstring); return when all are usable.

    Parameters
    ----------
    plans : list of bidsrecon.participant_plan.ParticipantPlan
    features : tuple, optional
        ``(directory, layer_shapes, fix)`` with ``--features-dir``: the folder, each decoded layer's
        shape for one image, and what to do when a file's shape differs (see
        :func:`check_training_features`).

    Raises
    ------
    BidsReconError
        Naming every problem, one per line; exit 66 when any file cannot be read, else 64.
    """
    problems = []
    for plan in plans:
        for run_inputs in plan.runs:
            problems += check_trials(run_inputs.run.events, run_inputs.run.set_name, run_inputs.run.trials)
        trials = pd.concat([pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
                            for path in plan.trials_files], ignore_index=True)
        problems += check_output_names(plan.subject, trials.groupby("set")["stimulus"])
    bolds = {(run_inputs.bold, run_inputs.run.tr): None for plan in plans for run_inputs in plan.runs}
    for bold, repetition_time in bolds:
        problems += check_bold(bold, repetition_time)
    for plan in plans:
        problems += check_motion_reference(plan)
    masks = {path: None for plan in plans
             for path in [*plan.roi_files, *(run_inputs.mask for run_inputs in plan.runs if run_inputs.mask)]}
    for mask in masks:
        problems += check_nifti(mask)
    stimuli = set()
    for plan in plans:
        stimuli.update(pd.read_csv(plan.stimuli_file, sep="\t", dtype=str, keep_default_na=False)["path"])
    for path in sorted(stimuli):
        problems += check_stimulus(path)
    if features is not None:
        problems += check_training_features(plans, *features)
    if not problems:
        LOGGER.info("pre-flight: %d bold file(s), %d mask(s) and %d stimulus image(s) checked",
                    len(bolds), len(masks), len(stimuli))
        return
    if len(problems) == 1:
        raise problems[0]
    code = EXIT_INPUT_MISSING if any(p.exit_code == EXIT_INPUT_MISSING for p in problems) else EXIT_BAD_ARGUMENTS
    lines = "\n".join(f"  - {problem}" for problem in problems)
    raise BidsReconError(f"{len(problems)} problems in the inputs, found before any processing "
                         f"(nothing was written to the output):\n{lines}", code)


def check_motion_reference(plan):
    """Raw input only: the volume every run is realigned to, checked as `Realign` will read it.

    That is the saved decoder's reference volume with ``--decoders-dir``, else the middle volume
    of the first training run (fMRIPrep input is not realigned here: nothing to check).
    """
    if not plan.runs or plan.input_mode == "fmriprep":
        return []
    try:
        if plan.input_mode == "saved_reference":
            check_reference_volume(plan.saved_decoder.reference_file, run=plan.runs[0].bold, mean=True)
        else:
            check_reference_volume(plan.runs[plan.reference_run].bold)
    except BidsReconError as problem:
        return [problem]
    return []


def check_training_features(plans, directory, layer_shapes, fix=""):
    """Problems of ``--features-dir`` for the training stimuli of every plan (a list, empty when none)."""
    names = set()
    for plan in plans:
        for trials_file in plan.trials_files:
            trials = pd.read_csv(trials_file, sep="\t", dtype=str, keep_default_na=False)
            names.update(trials.loc[trials["set"] == TRAINING, "stimulus"])
    try:
        return check_features(directory, sorted(names), layer_shapes, fix)
    except BidsReconError as problem:  # a stimulus name that cannot be a file name
        return [problem]


def check_stimulus(path):
    """Problems of one stimulus file: a list with the error of :func:`bidsrecon.images.read_rgb`, or empty."""
    try:
        read_rgb(path)
    except BidsReconError as error:
        return [error]
    return []


def check_bold(path, repetition_time):
    """Problems of one bold file: data cut short on disk, a header TR unlike the JSON's.

    Parameters
    ----------
    path : str
        A 4-D NIfTI file (``.nii`` or ``.nii.gz``).
    repetition_time : float
        The JSON sidecar's ``RepetitionTime`` (s), which the workflow uses.

    Returns
    -------
    list of BidsReconError
    """
    image, problems = _load_whole(path)
    if image is None:
        return problems
    header_tr, unit = _header_tr(image.header)
    if header_tr is not None and abs(header_tr - repetition_time) > TR_TOLERANCE_S:
        problems.append(BidsReconError(
            f"{path}: the header's TR is {header_tr:g} s (pixdim[4] in {unit}) but the JSON sidecar's "
            f"RepetitionTime is {repetition_time:g} s; bidsrecon times the events with the JSON's: correct "
            "whichever is wrong", EXIT_BAD_ARGUMENTS))
    return problems


def check_nifti(path):
    """Problems of one NIfTI file read whole later (an ROI or brain mask): unreadable, data cut short.

    Returns
    -------
    list of BidsReconError
    """
    return _load_whole(path)[1]


def check_trials(events_path, set_name, trials):
    """Problems of the trials one set takes from one events file: duplicate or overlapping onsets.

    Parameters
    ----------
    events_path : str
        Named in the message.
    set_name : str
    trials : pandas.DataFrame
        ``onset`` and ``duration`` (s), as in :class:`bidsrecon.bids.collect.Run`.

    Returns
    -------
    list of BidsReconError
    """
    order = np.argsort(trials["onset"].to_numpy(dtype=float), kind="stable")
    onsets = trials["onset"].to_numpy(dtype=float)[order]
    ends = onsets + trials["duration"].to_numpy(dtype=float)[order]
    clashes = np.flatnonzero(ends[:-1] > onsets[1:] + _OVERLAP_TOLERANCE_S)
    if not len(clashes):
        return []
    pairs = [f"{onsets[i]:g}-{ends[i]:g} s and {onsets[i + 1]:g}-{ends[i + 1]:g} s"
             + (" (the same onset)" if onsets[i] == onsets[i + 1] else "") for i in clashes[:5]]
    more = f" and {len(clashes) - 5} more" if len(clashes) > 5 else ""
    return [BidsReconError(
        f"{events_path}: {len(clashes)} pair(s) of '{set_name}' trials overlap: {'; '.join(pairs)}{more}; "
        "each trial must end before the next starts: correct the onsets and durations, or the "
        "specification's events filter if it selects rows it should not", EXIT_BAD_ARGUMENTS)]


def check_output_names(subject, sets):
    """Problems of the file names a participant's test items get: two stimuli, one name.

    Parameters
    ----------
    subject : str
    sets : iterable of (str, iterable of str)
        Set name and the stimulus names it holds (training sets are skipped: nothing is written per
        training image).

    Returns
    -------
    list of BidsReconError
    """
    owners = {}
    for set_name, stimuli in sets:
        if set_name == TRAINING:
            continue
        for stimulus in stimuli:
            owners.setdefault(item_stem(subject, set_name, stimulus), set()).add((set_name, stimulus))
    problems = []
    for stem, items in sorted(owners.items()):
        if len(items) < 2:
            continue
        names = " and ".join(f"stimulus {stimulus!r} of set {set_name!r}" for set_name, stimulus in sorted(items))
        problems.append(BidsReconError(
            f"sub-{subject}: {names} would {'both' if len(items) == 2 else 'all'} be written as "
            f"{stem}_recon.png (output names keep letters and digits only); rename the stimuli "
            "(or the sets) so that their names differ in a letter or digit", EXIT_BAD_ARGUMENTS))
    return problems


def _load_whole(path):
    """(image, problems): the image with its header read (None when unreadable) and its problems."""
    try:
        image = nib.load(path)
    except (OSError, EOFError, nib.filebasedimages.ImageFileError) as error:
        return None, [BidsReconError(f"{path}: cannot read it as NIfTI ({error})", EXIT_INPUT_MISSING)]
    # The proxy knows where the data start on disk (the loaded header's vox_offset is reset to 0).
    expected = int(image.dataobj.offset) + int(np.prod(image.shape)) * image.dataobj.dtype.itemsize
    if _data_complete(path, image, expected):
        return image, []
    return image, [BidsReconError(
        f"{path}: its data stop short of what its header declares (shape {image.shape}, {expected:,} bytes "
        "uncompressed): the file is truncated or corrupt; copy it again from its source", EXIT_INPUT_MISSING)]


def _data_complete(path, image, expected):
    """Whether the file holds all ``expected`` bytes (header and data) of its image."""
    if not str(path).endswith(".gz"):
        return os.path.getsize(path) >= expected
    # A gzip member ends with its uncompressed length modulo 2**32: reading 4 bytes settles it
    # for a file written in one piece. Otherwise (a multi-member file, a short one) read the last volume.
    with open(path, "rb") as stream:
        stream.seek(0, os.SEEK_END)
        if stream.tell() >= 18:
            stream.seek(-4, os.SEEK_END)
            if int.from_bytes(stream.read(4), "little") == expected % 2 ** 32:
                return True
    try:
        np.asarray(image.dataobj[..., -1])
    except (OSError, EOFError, ValueError, zlib.error) as error:  # what gzip and nibabel raise on short data
        LOGGER.debug("%s: reading its last volume failed: %s", path, error)
        return False
    return True


def _header_tr(header):
    """The header's TR in seconds and the unit it was written in; (None, unit) when it states none."""
    value = float(header["pixdim"][4])
    unit = header.get_xyzt_units()[1]
    if not np.isfinite(value) or value <= 0:
        return None, unit
    if unit in _TIME_UNITS:
        return value * _TIME_UNITS[unit], unit
    # No unit: 1 is what tools write when they set no TR (nibabel's default); other values are
    # taken as seconds (the NIfTI default and BIDS' unit).
    if unit == "unknown" and value != 1.0:
        return value, "unknown units, read as seconds"
    return None, unit
