"""Write the simulated ds001506-like BIDS dataset (and optionally fMRIPrep-style derivatives).

Layout (REFERENCE.md §3): ``sub-XX/ses-anatomy/anat`` holds a T1w;
``sub-XX/ses-<perceptionNaturalImageTraining01|…|imagery01>/func`` hold the runs with
their events.tsv; ``stimuli/`` holds one PNG per ``stimulus_name``;
``sourcedata/sub-XX/anat`` holds ds001506-style ROI masks on the functional grid;
``derivatives/fmriprep`` (optional) holds motion-free ``space-T1w_desc-preproc_bold``
runs, brain masks and confounds with the true motion.
"""
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from bidsrecon._version import __version__
from bidsrecon.errors import BidsReconError
from bidsrecon.simulate import bold, brain, confounds, design, images, stimuli
from bidsrecon.simulate.features import feature_maps
from bidsrecon.simulate.presets import get_preset

GENERATOR_NAME = "bidsrecon-simulate"
# Block-to-block variability of the evoked response, as a share of each voxel's gain.
TRIAL_NOISE = 0.3
# Log-normal SD of each subject's noise level around the preset's.
SUBJECT_NOISE_SPREAD = 0.15
# Texts shown during an imagery trial's cue and rating periods (they drive vision too).
CUE_TEXT = "imagine"
RATING_TEXT = "1 2 3 4 5"
_SIMULATION_ENTRIES = (
    "sub-*", "task-*.json", "stimuli", "README", "CHANGES", "participants.tsv",
    "participants.json", "sourcedata/sub-*", "derivatives/fmriprep",
)


@dataclass(frozen=True)
class SubjectSimulation:
    """Everything drawn for one subject before its runs are simulated.

    Attributes
    ----------
    label : str
        Subject label without ``sub-``.
    anatomy : brain.Anatomy
    model : brain.VoxelModel
    responses : ndarray, shape (n_stimuli + 2, n_visual_voxels)
        Steady-state percent-signal response to each stimulus (rows of the stimulus
        set), then to the imagery cue and rating screens.
    plans : list of design.RunPlan
    noise_scale : float
        This subject's measurement noise relative to the preset's level.
    signal_rng : numpy.random.Generator
        Draws this subject's noise, drift, motion and anatomy image.
    """

    label: str
    anatomy: brain.Anatomy
    model: brain.VoxelModel
    responses: np.ndarray
    plans: list
    noise_scale: float
    signal_rng: np.random.Generator


def generator(seed, *key):
    """Independent random stream for one part of the simulation.

    Key ``(0,)`` draws the stimuli; ``(subject, part)`` one part of a subject, so a
    subject does not change when others are added and its anatomy does not change
    when its noise level does.
    """
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def build_stimuli(preset, seed):
    """Stimulus set and the feature maps of its images plus the imagery screens.

    Parameters
    ----------
    preset : SimulationPreset
    seed : int

    Returns
    -------
    stimulus_set : stimuli.StimulusSet
    maps : ndarray, shape (n_stimuli + 2, n_channels, size, size)
    """
    stimulus_set = stimuli.make_stimulus_set(preset, generator(seed, 0))
    screens = np.stack([
        images.centred_text(CUE_TEXT, preset.image_size, 0.12),
        images.centred_text(RATING_TEXT, preset.image_size, 0.12),
    ])
    return stimulus_set, feature_maps(np.concatenate([stimulus_set.pixels, screens]))


def build_subject(preset, stimulus_set, maps, seed, subject):
    """Draw one subject's brain, encoding model and experiment.

    Parameters
    ----------
    preset : SimulationPreset
    stimulus_set : stimuli.StimulusSet
    maps : ndarray
        From :func:`build_stimuli`.
    seed : int
    subject : int
        From 1.

    Returns
    -------
    SubjectSimulation
    """
    anatomy = brain.make_anatomy(preset.volume_shape, preset.voxel_size_mm,
                                 preset.visual_fraction, generator(seed, subject, 0))
    model = brain.make_voxel_model(anatomy, generator(seed, subject, 1))
    is_training = np.array([stimulus.kind == "training" for stimulus in stimulus_set.stimuli])
    reference = np.concatenate([is_training, [False, False]])
    responses = brain.stimulus_responses(model, maps, reference)
    plans = design.plan_subject(
        preset, stimulus_set, stimuli.available_imagery_categories(stimulus_set),
        stimuli.misleading_category_names(stimulus_set), generator(seed, subject, 2))
    # Subjects differ in noise level too (head size, vigilance, coil distance).
    noise_scale = float(generator(seed, subject, 4).lognormal(0.0, SUBJECT_NOISE_SPREAD))
    return SubjectSimulation(f"{subject:02d}", anatomy, model, responses, plans, noise_scale,
                             generator(seed, subject, 3))


def event_amplitudes(plan, simulation, stimulus_set, rng):
    """Onsets, durations and per-voxel amplitudes of the events that drive vision.

    Perception blocks evoke the response to their image; an imagery period evokes the
    lab-mapped target's response scaled by each voxel's imagery gain and the trial's
    vividness rating (nothing for fixation); cue and rating screens evoke their own
    response. Every event gets independent trial-to-trial variability.

    Returns
    -------
    onsets, durations : ndarray, shape (n_events,)
    amplitudes : ndarray, shape (n_events, n_visual_voxels)
    """
    cue_row, rating_row = len(stimulus_set.stimuli), len(stimulus_set.stimuli) + 1
    onsets, durations, amplitudes = [], [], []
    for event in plan.events.itertuples(index=False):
        if event.event_type < 0 or (plan.task == "imagery" and event.event_type == 4):
            continue
        if plan.task == "perception":
            amplitude = simulation.responses[stimulus_set.row(event.stimulus_name)]
        elif event.event_type == 1:
            amplitude = simulation.responses[cue_row]
        elif event.event_type == 3:
            amplitude = simulation.responses[rating_row]
        else:
            target = stimuli.imagery_target(int(event.category_index))
            if target is None:
                continue
            vividness = 0.5 + 0.125 * (int(event.evaluation) - 1)
            amplitude = (simulation.responses[stimulus_set.row(target)]
                         * simulation.model.imagery_gain * vividness)
        onsets.append(event.onset)
        durations.append(event.duration)
        amplitudes.append(amplitude)
    amplitudes = np.array(amplitudes).reshape(len(onsets), simulation.responses.shape[1])
    amplitudes = amplitudes + rng.standard_normal(amplitudes.shape) * TRIAL_NOISE * simulation.model.gain
    return np.array(onsets, dtype=float), np.array(durations, dtype=float), amplitudes


def simulate_run_signal(plan, simulation, stimulus_set, preset, baseline):
    """Volumes of one planned run (raw with motion, and motion-free).

    Returns
    -------
    bold.RunSignal
    """
    rng = simulation.signal_rng
    anatomy = simulation.anatomy
    onsets, durations, amplitudes = event_amplitudes(plan, simulation, stimulus_set, rng)
    n_slices = preset.volume_shape[2]
    regressors = bold.event_regressors(onsets, durations, plan.n_volumes, design.TR,
                                       bold.slice_offsets(n_slices, design.TR))
    voxel_slices = np.nonzero(anatomy.visual_mask)[2]
    evoked = bold.evoked_signal(regressors, amplitudes, voxel_slices)
    return bold.simulate_run(anatomy.brain_mask, anatomy.visual_mask, baseline, evoked,
                             preset.noise * simulation.noise_scale, preset.motion_mm,
                             preset.voxel_size_mm, rng)


# --- writing -----------------------------------------------------------------------------

def _write_json(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2) + "\n")


def _write_tsv(path, table, float_format=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, sep="\t", index=False, na_rep="n/a", lineterminator="\n",
                 float_format=float_format)


def _write_nifti(path, data, affine, zooms, dtype):
    path.parent.mkdir(parents=True, exist_ok=True)
    if np.issubdtype(dtype, np.integer):
        data = np.clip(np.round(data), 0, np.iinfo(dtype).max)
    image = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    image.header.set_zooms(zooms)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)


def _is_previous_simulation(root):
    try:
        description = json.loads((root / "dataset_description.json").read_text())
        return description["GeneratedBy"][0]["Name"] == GENERATOR_NAME
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return False


def prepare_output_dir(out_dir):
    """Create the output folder, or clear a previous simulation in it.

    Only what a simulation writes is removed; anything else (say a bidsrecon output
    under ``derivatives/``) is left alone.

    Raises
    ------
    BidsReconError
        When the folder holds something that is not a previous simulation.
    """
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise BidsReconError(f"Output path {root} exists and is not a folder.")
    if root.exists() and any(root.iterdir()):
        if not _is_previous_simulation(root):
            raise BidsReconError(
                f"Output folder {root} is not empty and does not hold a dataset written by "
                f"{GENERATOR_NAME}; give a new or empty folder.")
        for pattern in _SIMULATION_ENTRIES:
            for path in root.glob(pattern):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        for folder in ("sourcedata", "derivatives"):
            if (root / folder).is_dir() and not any((root / folder).iterdir()):
                (root / folder).rmdir()
        # Removed last, so that an interrupted clean-up is still recognised next time.
        (root / "dataset_description.json").unlink()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _events_sidecars():
    perception = {
        "event_type": {"Description": "Kind of period.", "Levels": {
            "-1": "initial rest (32 s)", "-2": "final rest (6 s)", "-3": "rest between letter blocks",
            "1": "stimulus block", "2": "one-back repeat of the previous block's image"}},
        "stimulus_id": {"Description": "WNID.imageID for natural images (parse stimulus_name "
                                       "instead: trailing zeros get lost), the number for shapes "
                                       "and letters."},
        "stimulus_name": {"Description": "File stem of the image in stimuli/."},
        "category_index": {"Description": "Index of the image's category within its set."},
        "image_index": {"Description": "Index of the image within its set."},
        "response_time": {"Description": "One-back button press after block onset.", "Units": "s"},
    }
    imagery = {
        "trial_no": {"Description": "Trial number within the run."},
        "event_type": {"Description": "Kind of period.", "Levels": {
            "-1": "initial rest (32 s)", "-2": "final rest (6 s)", "1": "cue (4 s)",
            "2": "imagery (8 s)", "3": "vividness rating (3 s)", "4": "inter-trial interval (1 s)"}},
        "category_id": {"Description": "As in ds001506: a natural test synset that does NOT name "
                                       "the imagined target; use category_index."},
        "category_name": {"Description": "As in ds001506: misleading, see category_id."},
        "category_index": {"Description": "Imagined target in the lab's mapping: 1-15 colour shapes "
                                          "(red, green, blue, white, black x smallring, +, X; shape "
                                          "fastest), 16 fixation, 17-26 natural test images "
                                          + ", ".join(stimuli.LAB_TEST_IMAGES) + "."},
        "response_time": {"Description": "Rating response after the rating onset.", "Units": "s"},
        "evaluation": {"Description": "Vividness rating, 1 (low) to 5 (high)."},
    }
    return perception, imagery


def _write_dataset_files(root, preset, seed, n_subjects):
    note = (f"Simulated with {GENERATOR_NAME} (preset {preset.name}, seed {seed}, noise "
            f"{preset.noise:g}%); no human participant, all data synthetic.")
    _write_json(root / "dataset_description.json", {
        "Name": f"Simulated ds001506-like dataset ({preset.name})",
        "BIDSVersion": "1.10.0",
        "DatasetType": "raw",
        "License": "CC0",
        "Authors": ["bidsrecon developers"],
        "GeneratedBy": [{"Name": GENERATOR_NAME, "Version": __version__, "Description": note}],
        "ReferencesAndLinks": ["https://doi.org/10.1371/journal.pcbi.1006633",
                               "https://openneuro.org/datasets/ds001506"],
    })
    (root / "README").write_text(
        "# Simulated ds001506-like dataset\n\n" + note + "\n\n"
        "It mirrors the layout of OpenNeuro ds001506 (Shen, Horikawa, Majima & Kamitani 2019, "
        "'Deep image reconstruction from human brain activity'): the same session names, tasks, "
        "events.tsv columns and codes, and a stimuli/ folder. The brain is an encoding model of "
        "its own (population receptive fields over luminance, colour opponency and contrast "
        "energy), not a deep network. ROI masks are in sourcedata/.\n\n"
        "As in ds001506, the imagery events' category_name/category_id columns do not name the "
        "imagined target: category_index does, in the lab's mapping (see task-imagery_events.json).\n")
    (root / "CHANGES").write_text(f"1.0.0 {note}\n")
    ages = generator(seed, 0, 1).integers(20, 45, n_subjects)
    participants = "participant_id\tage\n" + "".join(
        f"sub-{subject:02d}\t{age}\n" for subject, age in zip(range(1, n_subjects + 1), ages))
    (root / "participants.tsv").write_text(participants)
    _write_json(root / "participants.json", {
        "age": {"Description": "Fictitious age of the simulated participant.", "Units": "year"}})
    slice_timing = [round(float(t), 4) for t in bold.slice_offsets(preset.volume_shape[2], design.TR)]
    perception_events, imagery_events = _events_sidecars()
    for task, description in (
        ("perception", "Passive viewing of natural images, colour shapes and letters in 8-s "
                       "(letters 12-s) blocks with a one-back repetition task."),
        ("imagery", "Visual imagery of cued shapes or natural images for 8 s, then a vividness rating."),
    ):
        _write_json(root / f"task-{task}_bold.json", {
            "TaskName": task, "TaskDescription": description, "RepetitionTime": design.TR,
            "SliceTiming": slice_timing, "SliceEncodingDirection": "k"})
    _write_json(root / "task-perception_events.json", perception_events)
    _write_json(root / "task-imagery_events.json", imagery_events)


def _write_stimuli(root, stimulus_set):
    folder = root / "stimuli"
    folder.mkdir(parents=True, exist_ok=True)
    for stimulus, pixels in zip(stimulus_set.stimuli, stimulus_set.pixels):
        Image.fromarray(pixels).save(folder / f"{stimulus.name}.png")


def _write_fmriprep_description(root):
    folder = root / "derivatives" / "fmriprep"
    _write_json(folder / "dataset_description.json", {
        "Name": "Simulated fMRIPrep-style derivatives",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": "fMRIPrep", "Version": "simulated",
            "Description": f"Not produced by fMRIPrep: written by {GENERATOR_NAME} {__version__} in "
                           "fMRIPrep's layout; preproc bold is the simulated signal without head "
                           "motion, confounds hold the true motion."}],
        "DatasetLinks": {"raw": "../../"},
        "SourceDatasets": [{"URL": "bids:raw:"}],
    })
    (folder / "README").write_text(
        "Simulated fMRIPrep-style derivatives of the simulated raw dataset two folders up.\n"
        "Not produced by fMRIPrep; see dataset_description.json.\n")
    # fMRIPrep's own .bidsignore needs *_timeseries.* added (REFERENCE.md §6).
    (folder / ".bidsignore").write_text("*_timeseries.*\n")


def _write_anatomy(root, simulation, preset, fmriprep):
    label = simulation.label
    anatomy = simulation.anatomy
    t1w, t1w_affine = brain.t1w_volume(anatomy, simulation.signal_rng)
    t1w_zooms = (preset.voxel_size_mm / 2,) * 3
    _write_nifti(root / f"sub-{label}/ses-anatomy/anat/sub-{label}_ses-anatomy_T1w.nii.gz",
                 t1w, t1w_affine, t1w_zooms, np.int16)
    zooms = (preset.voxel_size_mm,) * 3
    for name, mask in brain.roi_masks(anatomy).items():
        _write_nifti(root / f"sourcedata/sub-{label}/anat/sub-{label}_mask_{name}.nii.gz",
                     mask, anatomy.affine, zooms, np.uint8)
    if fmriprep:
        folder = root / f"derivatives/fmriprep/sub-{label}/anat"
        _write_nifti(folder / f"sub-{label}_desc-preproc_T1w.nii.gz", t1w, t1w_affine, t1w_zooms, np.int16)
        _write_json(folder / f"sub-{label}_desc-preproc_T1w.json", {
            "SkullStripped": False,
            "Sources": [f"bids:raw:sub-{label}/ses-anatomy/anat/sub-{label}_ses-anatomy_T1w.nii.gz"]})


def _write_run(root, simulation, plan, signal, preset, fmriprep):
    label = simulation.label
    stem = f"sub-{label}_ses-{plan.session}_task-{plan.task}_run-{plan.run:02d}"
    func = Path(f"sub-{label}/ses-{plan.session}/func")
    affine = simulation.anatomy.affine
    zooms = (preset.voxel_size_mm,) * 3 + (design.TR,)
    _write_nifti(root / func / f"{stem}_bold.nii.gz", signal.raw, affine, zooms, np.int16)
    _write_tsv(root / func / f"{stem}_events.tsv", plan.events)
    if not fmriprep:
        return
    folder = root / "derivatives/fmriprep" / func
    source = f"bids:raw:{func.as_posix()}/{stem}_bold.nii.gz"
    # The functional grid stands in for T1w space at functional resolution.
    reference = f"bids::sub-{label}/anat/sub-{label}_desc-preproc_T1w.nii.gz"
    _write_nifti(folder / f"{stem}_space-T1w_desc-preproc_bold.nii.gz", signal.motion_free,
                 affine, zooms, np.int16)
    _write_json(folder / f"{stem}_space-T1w_desc-preproc_bold.json", {
        "RepetitionTime": design.TR, "TaskName": plan.task, "SkullStripped": False,
        "SliceTimingCorrected": False, "SpatialReference": reference, "Sources": [source]})
    _write_nifti(folder / f"{stem}_space-T1w_desc-brain_mask.nii.gz", simulation.anatomy.brain_mask,
                 affine, zooms[:3], np.uint8)
    _write_json(folder / f"{stem}_space-T1w_desc-brain_mask.json", {
        "Type": "Brain", "SpatialReference": reference, "Sources": [source]})
    table, sidecar = confounds.confounds(signal.motion_free, signal.motion, simulation.anatomy.brain_mask,
                                         simulation.anatomy.visual_mask, design.TR)
    _write_tsv(folder / f"{stem}_desc-confounds_timeseries.tsv", table, float_format="%.6g")
    _write_json(folder / f"{stem}_desc-confounds_timeseries.json", sidecar)


def _write_subject(root, simulation, stimulus_set, preset, fmriprep):
    _write_anatomy(root, simulation, preset, fmriprep)
    baseline = bold.baseline_intensity(simulation.anatomy.brain_mask, simulation.signal_rng)
    for plan in simulation.plans:
        signal = simulate_run_signal(plan, simulation, stimulus_set, preset, baseline)
        _write_run(root, simulation, plan, signal, preset, fmriprep)


def _check_whole_number(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise BidsReconError(f"{name} must be a whole number >= {minimum}; got {value!r}.")
    return int(value)


def simulate_dataset(out_dir, n_subjects=1, preset="tiny", seed=0, fmriprep=False, noise=None):
    """Write a simulated ds001506-like BIDS dataset.

    Parameters
    ----------
    out_dir : str or pathlib.Path
        New or empty folder, or one holding a previous simulation (replaced).
    n_subjects : int
        Subjects ``sub-01`` … .
    preset : str
        ``tiny`` (tests, seconds) or ``demo`` (the demo, under a minute), see
        :data:`bidsrecon.simulate.presets.PRESETS`.
    seed : int
        Same seed, same dataset, byte for byte.
    fmriprep : bool
        Also write ``derivatives/fmriprep``.
    noise : float or None
        Measurement-noise SD in percent signal; None keeps the preset's.

    Returns
    -------
    pathlib.Path
        The dataset root.

    Raises
    ------
    BidsReconError
        For an unknown preset, bad counts or seed, or an output folder in use.
    """
    settings = get_preset(preset, noise)
    n_subjects = _check_whole_number(n_subjects, "n_subjects", 1)
    seed = _check_whole_number(seed, "seed", 0)
    root = prepare_output_dir(out_dir)
    stimulus_set, maps = build_stimuli(settings, seed)
    _write_dataset_files(root, settings, seed, n_subjects)
    _write_stimuli(root, stimulus_set)
    if fmriprep:
        _write_fmriprep_description(root)
    for subject in range(1, n_subjects + 1):
        simulation = build_subject(settings, stimulus_set, maps, seed, subject)
        _write_subject(root, simulation, stimulus_set, settings, fmriprep)
    return root
