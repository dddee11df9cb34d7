"""Noise ceiling of a simulated dataset: how well its measured test samples identify their items.

A simulated dataset knows what an ideal decoder could only approach: each voxel's noise-free
response to each image. Comparing the measured test samples with those responses, by the same
pairwise identification that scores reconstructions, says how much item identity the
simulation's noise leaves in the data. No decoder sees more of an item than its measured
samples carry, so reconstruction identification well above this ceiling points to a leak, and
well below it to room for the decoder or the reconstruction (in the spirit of the noise ceiling
of Nili et al. 2014, *A toolbox for representational similarity analysis*, PLoS Comput Biol
10(4): e1003553, here with the true responses known instead of estimated).

The noise-free responses are not stored in the dataset: they are regenerated from what it
records (``dataset_description.json``: the generator ``bidsrecon-simulate``, the preset and the
seed) by the simulator's own functions, which are deterministic in the preset, seed and
subject (:func:`bidsrecon.simulate.dataset.build_subject`). The regeneration is checked
against the dataset (its stimulus names and the subject's ROI masks), because a simulator of
another version could draw differently.
"""
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from bidsrecon._version import __version__
from bidsrecon.errors import EXIT_BAD_ARGUMENTS, BidsReconError
from bidsrecon.evaluation.identification import pairwise_identification
from bidsrecon.simulate.dataset import GENERATOR_NAME, build_stimuli, build_subject
from bidsrecon.simulate.presets import get_preset

# How dataset.py words its record: "Simulated with bidsrecon-simulate (preset tiny, seed 0, ...".
_RECORD = re.compile(r"\(preset (?P<preset>[^,\s]+), seed (?P<seed>\d+)")


@dataclass(frozen=True)
class NoiseFreeResponses:
    """One simulated subject's noise-free responses, regenerated.

    Attributes
    ----------
    stimuli : tuple of str
        Stimulus names, one per row of ``responses``.
    responses : ndarray, shape (n_stimuli, n_visual_voxels)
        Steady-state response of each visual voxel to each image, in percent signal: what a
        block evokes before trial-to-trial variability, drift and measurement noise.
    imagery_gain : ndarray, shape (n_visual_voxels,)
        How strongly each voxel responds when the image is imagined rather than seen.
    visual_mask : ndarray of bool, shape (x, y, z)
        The visual voxels; columns of ``responses`` are its voxels in C order.
    prfs : ndarray, shape (n_visual_voxels, 3), or None
        Each visual voxel's pRF: centre x and y and Gaussian SD, in image units (the image spans
        [-1, 1], y up).
    """

    stimuli: tuple
    responses: np.ndarray
    imagery_gain: np.ndarray
    visual_mask: np.ndarray
    prfs: np.ndarray = None


def simulation_record(bids_dir):
    """Preset and seed of a dataset written by the simulator; None for any other dataset.

    Parameters
    ----------
    bids_dir : str or Path

    Returns
    -------
    dict or None
        ``{"preset": str, "seed": int, "version": str}``.

    Raises
    ------
    BidsReconError
        When the dataset names the simulator as its generator but its record cannot be read.
    """
    path = Path(bids_dir) / "dataset_description.json"
    try:
        generated_by = json.loads(path.read_text())["GeneratedBy"][0]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    if not isinstance(generated_by, dict) or generated_by.get("Name") != GENERATOR_NAME:
        return None
    match = _RECORD.search(str(generated_by.get("Description", "")))
    if match is None:
        raise BidsReconError(f"{path} names {GENERATOR_NAME} as its generator but its "
                             "Description does not record the preset and seed.")
    return {"preset": match["preset"], "seed": int(match["seed"]),
            "version": str(generated_by.get("Version", ""))}


def noise_free_responses(bids_dir, subject):
    """Regenerate a simulated subject's noise-free responses to every stimulus.

    Parameters
    ----------
    bids_dir : str or Path
        A dataset written by :func:`bidsrecon.simulate.simulate_dataset`.
    subject : str
        Label without ``sub-`` (``"01"``).

    Returns
    -------
    NoiseFreeResponses or None
        None when the dataset was not made by the simulator.

    Raises
    ------
    BidsReconError
        For a subject the dataset lacks, or when the regenerated stimuli or ROI masks differ
        from the dataset's (another simulator version, or an edited dataset).
    """
    record = simulation_record(bids_dir)
    if record is None:
        return None
    root = Path(bids_dir)
    subject = str(subject).removeprefix("sub-")
    if not subject.isdigit() or not (root / f"sub-{subject}").is_dir():
        raise BidsReconError(f"{root} has no simulated subject sub-{subject}.", EXIT_BAD_ARGUMENTS)
    if record["version"] != __version__:
        warnings.warn(f"{root} was simulated by {GENERATOR_NAME} {record['version']}, this is "
                      f"{__version__}; the regenerated responses are checked against it",
                      RuntimeWarning, stacklevel=2)
    preset = get_preset(record["preset"])
    stimulus_set, maps = build_stimuli(preset, record["seed"])
    names = tuple(stimulus.name for stimulus in stimulus_set.stimuli)
    on_disk = {path.stem for path in (root / "stimuli").glob("*.png")}
    if on_disk != set(names):
        raise BidsReconError(f"{root}/stimuli does not hold the stimuli that preset "
                             f"{record['preset']} with seed {record['seed']} makes; cannot "
                             "regenerate its noise-free responses.")
    simulation = build_subject(preset, stimulus_set, maps, record["seed"], int(subject))
    visual_mask = simulation.anatomy.visual_mask
    rois = _roi_union(root, subject, visual_mask.shape)
    if rois is not None and not np.array_equal(rois, visual_mask):
        raise BidsReconError(f"The ROI masks of sub-{subject} in {root}/sourcedata differ from "
                             "the regenerated anatomy; cannot regenerate its responses.")
    # The last two rows are the imagery cue and rating screens, not stimuli.
    model = simulation.model
    return NoiseFreeResponses(names, simulation.responses[:len(names)], model.imagery_gain, visual_mask,
                              np.stack([model.prf_x, model.prf_y, model.prf_sigma], axis=1))


def ceiling_identification(measured, noise_free):
    """Pairwise identification of measured item samples against noise-free item responses.

    Each voxel is centred on its mean over the items, in both: the response every item of the
    set shares (any image against the grey rest) says nothing about which item it is, and the
    measured samples carry an arbitrary per-voxel offset from the run-wise z-scoring.

    Parameters
    ----------
    measured : ndarray, shape (n_items, n_voxels)
        One sample per item (its trials averaged).
    noise_free : ndarray, shape (n_items, n_voxels)
        The same items' noise-free responses, in the same voxels.

    Returns
    -------
    ndarray, shape (n_items,)
        Per item, the fraction of the other items whose noise-free response correlates less
        with its measured sample than its own does (chance 0.5).
    """
    measured = np.asarray(measured, dtype=np.float64)
    noise_free = np.asarray(noise_free, dtype=np.float64)
    if measured.shape != noise_free.shape or measured.ndim != 2:
        raise ValueError(f"measured {measured.shape} and noise-free {noise_free.shape} must be "
                         "the same (n_items, n_voxels) shape")
    return pairwise_identification(measured - measured.mean(axis=0),
                                   noise_free - noise_free.mean(axis=0))


def measured_test_samples(bids_dir, subject, mask, spec="ds001506", discard_seconds=8.0,
                          delay_seconds=4.0, clip_sd=3.0):
    """One sample per test trial, in the voxels of ``mask``, as bidsrecon's block method takes it.

    Per test run: the first ``discard_seconds`` left out, constant and linear trend regressed
    out, voxels z-scored and clipped (:func:`bidsrecon.preproc.clean_run`), then each trial's
    delayed window averaged (:func:`bidsrecon.preproc.block_samples`); the defaults are the
    participant level's. The raw runs are used without motion correction: the simulated head
    moves at most ``motion_mm`` (0.3 mm for every preset), a tenth of a voxel.

    Parameters
    ----------
    bids_dir : str or Path
    subject : str
        Label without ``sub-``.
    mask : ndarray of bool, shape (x, y, z)
        Voxels to sample, on the runs' grid.
    spec : str
        Decoding specification (name or path) that sorts runs and trials into sets.
    discard_seconds, delay_seconds, clip_sd : float

    Returns
    -------
    dict of str to (list of str, ndarray of shape (n_trials, n_mask_voxels))
        Per test set, each trial's stimulus name and its sample, in the order of the runs.
    """
    from bidsrecon.bids.collect import collect_runs, load_layout
    from bidsrecon.preproc import block_samples, clean_run
    from bidsrecon.preproc.inputs import load_bold, masked_time_series
    from bidsrecon.spec import TRAINING, load_spec

    # Test sets only: a dataset of later sessions (applied with --decoders-dir) has no training runs.
    runs = collect_runs(load_layout(bids_dir), str(subject).removeprefix("sub-"), load_spec(spec),
                        delay=delay_seconds, training=False)
    by_set = {}
    for run in runs:
        if run.set_name == TRAINING:
            continue
        data = masked_time_series(load_bold(run.bold), mask)
        cleaned = clean_run(data, n_discard=int(round(discard_seconds / run.tr)), clip_sd=clip_sd)
        samples = block_samples(cleaned, run.tr, run.trials["onset"], run.trials["duration"],
                                delay_seconds)
        names, rows = by_set.setdefault(run.set_name, ([], []))
        names.extend(run.trials["stimulus"])
        rows.append(samples)
    return {name: (names, np.concatenate(rows)) for name, (names, rows) in by_set.items()}


def simulated_noise_ceiling(bids_dir, subject, samples_by_set=None, mask=None,
                            voxel_indices=None, imagery_sets=("imagery",), spec="ds001506"):
    """Identification accuracy that a simulated dataset's noise allows, per test set.

    For each test set: the measured samples of each item (its trials averaged, as the decoder
    sees them) are compared with the noise-free responses of all the set's items in the same
    voxels, by :func:`ceiling_identification`; the result is the mean over items (chance 0.5,
    1 when the noise never confuses two items). It is a ceiling for identification in brain
    space, by correlation; reconstructions are scored in image or feature space, where the
    number can differ, but it should not exceed this one by much.

    Parameters
    ----------
    bids_dir : str or Path
    subject : str
        Label without ``sub-``.
    samples_by_set : dict, optional
        Per test set, ``(stimulus_names, samples)``: the stimulus of each row and the samples,
        shape (n_rows, n_columns); rows with the same stimulus are averaged. When omitted, the
        samples are taken from the dataset's raw runs in its visual voxels
        (:func:`measured_test_samples`).
    mask : ndarray of bool, shape (x, y, z), or str or Path of a NIfTI mask
        With ``samples_by_set``: the mask the samples were taken in (columns are its voxels in
        C order), on the simulated grid.
    voxel_indices : array-like of int, optional
        With ``samples_by_set``: the mask voxels the columns are, when a voxel selection kept
        only some of them.
    imagery_sets : sequence of str
        Sets of imagined, not seen, images: their noise-free response is the seen one times
        each voxel's imagery gain. (Each trial's vividness rating scales the whole pattern as
        well; that scale is left out.)
    spec : str
        Decoding specification, when the samples are taken here.

    Returns
    -------
    dict of str to float, or None
        Per test set with at least 2 items, its ceiling; None when the dataset was not made by
        the simulator.
    """
    truth = noise_free_responses(bids_dir, subject)
    if truth is None:
        return None
    if samples_by_set is None:
        mask = truth.visual_mask
        samples_by_set = measured_test_samples(bids_dir, subject, mask, spec=spec)
    elif mask is None:
        raise ValueError("samples_by_set needs the mask its columns were taken in")
    columns = _visual_columns(_as_mask(mask, truth.visual_mask.shape), truth.visual_mask,
                              voxel_indices)
    # Voxels outside visual cortex respond to nothing: their noise-free response is 0.
    in_visual = columns >= 0
    responses = np.zeros((len(truth.stimuli), len(columns)))
    responses[:, in_visual] = truth.responses[:, columns[in_visual]]
    imagery_gain = np.zeros(len(columns))
    imagery_gain[in_visual] = truth.imagery_gain[columns[in_visual]]
    row_of = {name: row for row, name in enumerate(truth.stimuli)}

    ceilings = {}
    for set_name, (names, samples) in samples_by_set.items():
        samples = np.asarray(samples, dtype=np.float64)
        names = [str(name) for name in names]
        if samples.shape != (len(names), len(columns)):
            raise ValueError(f"set {set_name!r}: samples of shape {samples.shape} for "
                             f"{len(names)} stimulus names and {len(columns)} voxels")
        unknown = sorted(set(names) - set(row_of))
        if unknown:
            raise ValueError(f"set {set_name!r}: stimuli {unknown} are not in the simulation")
        items = list(dict.fromkeys(names))
        if len(items) < 2:
            continue
        labels = np.asarray(names)
        measured = np.stack([samples[labels == item].mean(axis=0) for item in items])
        noise_free = responses[[row_of[item] for item in items]]
        if set_name in imagery_sets:
            noise_free = noise_free * imagery_gain
        ceilings[set_name] = float(ceiling_identification(measured, noise_free).mean())
    return ceilings


def _roi_union(root, subject, shape):
    """Union of the subject's ROI masks in sourcedata; None when it has none."""
    paths = sorted((root / "sourcedata" / f"sub-{subject}" / "anat").glob(
        f"sub-{subject}_mask_*.nii.gz"))
    if not paths:
        return None
    union = np.zeros(shape, dtype=bool)
    for path in paths:
        data = np.asanyarray(nib.load(path).dataobj) > 0
        if data.shape != shape:
            return data  # a grid that differs cannot match; the caller reports it
        union |= data
    return union


def _as_mask(mask, shape):
    if isinstance(mask, (str, Path)):
        mask = np.asanyarray(nib.load(mask).dataobj) > 0
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != shape:
        raise ValueError(f"mask has shape {mask.shape}; the simulated grid is {shape}")
    return mask


def _visual_columns(mask, visual_mask, voxel_indices):
    """For each sample column, its index among the visual voxels, or -1 outside them."""
    index = np.full(visual_mask.shape, -1)
    index[visual_mask] = np.arange(int(visual_mask.sum()))
    columns = index[mask]
    if voxel_indices is not None:
        columns = columns[np.asarray(voxel_indices, dtype=int)]
    return columns
