"""A copy of the published ds001506 tree, from its real metadata, with synthetic images in it.

OpenNeuro ds001506's metadata (every events file and bold sidecar, ``dataset_description.json``,
``README``, ``CHANGES``, ``sourcedata/README``; see the reference data's README) is copied byte for
byte for one subject and a subset of its runs; what the metadata does not hold is made up:

- each kept run's bold: the simulated brain of :mod:`bidsrecon.simulate` (an encoding model of
  the stimulus images, noise, drift and head motion) driven by the run's published events, as
  many volumes as the events need at the sidecar's ``RepetitionTime`` (every run ends on a
  whole TR), on a small grid;
- the ROI masks, under ds001506's names
  (``sourcedata/sub-XX/anat/sub-XX_mask_{LH,RH}_{V1d,…,HVC}.nii.gz``) on that grid;
- one image per stimulus the kept runs name, in a folder of its own (the dataset has none; users
  pass theirs with ``--stimuli-dir``): natural images (``n<WNID>_<imageID>.JPEG``, crops of bundled
  photographs and textures), the colour shapes and the letters, drawn from their names.
  Imagery trials name their target by ``category_index`` in the lab's mapping
  (:func:`bidsrecon.simulate.stimuli.imagery_target`), so those targets get images too. With
  ``annex_stimuli``, the folder is laid out as a DataLad/git-annex dataset: each image a relative
  link into the folder's ``.git/annex/objects/xx/yy/KEY/KEY``.

Nothing else is added: no ``participants.tsv`` (the published dataset has none), no
``.bidsignore``, and ``dataset_description.json`` keeps its ``"Funding": ""``.
"""
import dataclasses
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from PIL import Image

from bidsrecon.simulate import brain, images, stimuli
from bidsrecon.simulate.bold import baseline_intensity
from bidsrecon.simulate.dataset import (
    CUE_TEXT,
    RATING_TEXT,
    SubjectSimulation,
    _write_nifti,
    generator,
    simulate_run_signal,
)
from bidsrecon.simulate.design import SESSION_PREFIXES, TR, RunPlan
from bidsrecon.simulate.features import feature_maps
from bidsrecon.simulate.presets import get_preset

# Runs kept per kind of session by default: the first ones in session and run order.
DEFAULT_RUNS = {"training": 2, "test": 1, "shape": 1, "letter": 1, "imagery": 1}
_RUN_FILE = re.compile(r"sub-(?P<subject>[^_]+)_ses-(?P<session>[^_]+)_task-(?P<task>[^_]+)_run-(?P<run>\d+)_"
                       r"(?P<suffix>events\.tsv|bold\.json)$")
_SHAPE = re.compile(r"colorExpStim\d+_(?P<colour>[a-z]+)_(?P<shape>.+)$")
_LETTER = re.compile(r"letter_black_img\d+_(?P<letter>[A-Z])$")
_JPEG_QUALITY = 95


@dataclasses.dataclass(frozen=True)
class PublishedCopy:
    """Where :func:`copy_published` wrote, and what."""

    bids_dir: Path
    stimuli_dir: Path
    runs: tuple  # (session, task, run) of each kept run
    stimuli: tuple  # stimulus names written


def copy_published(metadata, bids_dir, stimuli_dir, subject="01", runs=None, volume_shape=(12, 12, 8),
                   voxel_size_mm=3.0, image_size=64, seed=0, noise=None, annex_stimuli=False):
    """Write one subject of ds001506 as published, with synthetic bold, ROI masks and stimuli.

    Parameters
    ----------
    metadata : path-like
        ``ds001506-metadata.tar.gz`` or the folder it unpacks to.
    bids_dir, stimuli_dir : path-like
        New folders for the dataset and for the stimulus images.
    subject : str
        Label without ``sub-``.
    runs : dict, optional
        Runs kept per kind of session (``training``, ``test``, ``shape``, ``letter``,
        ``imagery``): the first N in session and run order; default :data:`DEFAULT_RUNS`.
    volume_shape : tuple of int
        The synthetic bold grid (x and z even).
    voxel_size_mm, image_size, seed, noise
        Voxel size, stimulus image side, random seed, measurement noise (percent; None: the
        ``tiny`` preset's).
    annex_stimuli : bool
        Lay the stimulus folder out as git-annex does (links into its ``.git/annex/objects``).

    Returns
    -------
    PublishedCopy
    """
    bids_dir, stimuli_dir = Path(bids_dir), Path(stimuli_dir)
    for folder in (bids_dir, stimuli_dir):
        if folder.exists() and any(folder.iterdir()):
            raise ValueError(f"{folder} is not empty")
    with tempfile.TemporaryDirectory() as unpacked:
        source = _unpacked(metadata, Path(unpacked))
        kept = _choose_runs(source, subject, {**DEFAULT_RUNS, **(runs or {})})
        _copy_published_files(source, bids_dir, subject, kept)
    tables = {key: _read_events(path) for key, path in _events_files(bids_dir, subject, kept).items()}
    stimulus_set = _stimulus_set(tables, image_size, generator(seed, 0))
    _write_stimuli(stimulus_set, stimuli_dir)
    if annex_stimuli:
        annex_folder(stimuli_dir)
    preset = dataclasses.replace(get_preset("tiny", noise), volume_shape=tuple(volume_shape),
                                 voxel_size_mm=float(voxel_size_mm), image_size=int(image_size))
    simulation = _subject(preset, stimulus_set, seed, subject)
    _write_rois(bids_dir, simulation, preset)
    baseline = baseline_intensity(simulation.anatomy.brain_mask, simulation.signal_rng)
    for key, events in tables.items():
        session, task, run = key
        tr = _repetition_time(bids_dir, subject, key)
        plan = RunPlan(session, int(run), task, _for_simulation(events, task), _n_volumes(events, tr, key))
        signal = simulate_run_signal(plan, simulation, stimulus_set, preset, baseline)
        _write_nifti(_run_path(bids_dir, subject, key, "bold.nii.gz"), signal.raw, simulation.anatomy.affine,
                     (preset.voxel_size_mm,) * 3 + (tr,), np.int16)
    return PublishedCopy(bids_dir, stimuli_dir, tuple(tables), tuple(s.name for s in stimulus_set.stimuli))


# --- the published files ---------------------------------------------------------------------

def _unpacked(metadata, scratch):
    """The folder holding the published tree (``dataset_description.json`` at its top)."""
    metadata = Path(metadata)
    if metadata.is_dir():
        root = metadata
    else:
        with tarfile.open(metadata) as archive:
            # The "data" filter (no absolute paths, links out or devices) where Python has it.
            archive.extractall(scratch, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        root = scratch
    found = sorted(root.rglob("dataset_description.json"), key=lambda path: len(path.parts))
    if not found:
        raise ValueError(f"{metadata} holds no dataset_description.json")
    return found[0].parent


def _choose_runs(source, subject, counts):
    """(session, task, run) of the runs kept: the first ``counts[kind]`` of each kind of session."""
    available = sorted({
        (match["session"], match["task"], match["run"])
        for path in (source / f"sub-{subject}").glob("ses-*/func/*")
        if (match := _RUN_FILE.match(path.name)) and match["subject"] == subject
    })
    if not available:
        raise ValueError(f"{source} has no runs of sub-{subject}")
    kept = []
    for kind, count in counts.items():
        prefix = SESSION_PREFIXES[kind]
        of_kind = [key for key in available if re.fullmatch(rf"{prefix}\d+", key[0])]
        if len(of_kind) < count:
            raise ValueError(f"sub-{subject} has {len(of_kind)} {kind} run(s); {count} asked for")
        kept += of_kind[:count]
    return sorted(kept)


def _copy_published_files(source, bids_dir, subject, kept):
    """Every published file outside ``sub-*`` folders, and the kept runs' events and sidecars."""
    for path in sorted(source.rglob("*")):
        relative = PurePosixPath(path.relative_to(source).as_posix())
        if not path.is_file() or relative.parts[0].startswith("sub-"):
            continue
        _copy(path, bids_dir / relative)
    for key in kept:
        for suffix in ("events.tsv", "bold.json"):
            _copy(_run_path(source, subject, key, suffix), _run_path(bids_dir, subject, key, suffix))


def _copy(source, target):
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def _run_path(root, subject, key, suffix):
    session, task, run = key
    return (Path(root) / f"sub-{subject}" / f"ses-{session}" / "func"
            / f"sub-{subject}_ses-{session}_task-{task}_run-{run}_{suffix}")


def _events_files(bids_dir, subject, kept):
    return {key: _run_path(bids_dir, subject, key, "events.tsv") for key in kept}


def _read_events(path):
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False,
                       dtype={"stimulus_name": str, "stimulus_id": str})


def _repetition_time(bids_dir, subject, key):
    return float(json.loads(_run_path(bids_dir, subject, key, "bold.json").read_text())["RepetitionTime"])


def _n_volumes(events, tr, key):
    """Volumes covering the events exactly (every ds001506 run ends on a whole TR)."""
    end = float(events["onset"].iloc[-1] + events["duration"].iloc[-1])
    n_volumes = int(round(end / tr))
    if not np.isclose(n_volumes * tr, end):
        raise ValueError(f"run {key}: its events end at {end} s, not on a whole TR of {tr} s")
    if not np.isclose(tr, TR):
        raise ValueError(f"run {key}: TR {tr} s; the simulated haemodynamics assume {TR} s")
    return n_volumes


def _for_simulation(events, task):
    """The events as the simulator reads them (a copy: the published file is not touched)."""
    events = events.copy()
    events["event_type"] = events["event_type"].astype(int)
    if task == "imagery":
        # A trial without a vividness rating is simulated as a middling one.
        events["evaluation"] = events["evaluation"].fillna(3)
    return events


# --- the stimuli -----------------------------------------------------------------------------

def _needed_stimuli(tables):
    """Stimulus names by kind: every image a kept run shows, and every imagery target."""
    needed = {"training": set(), "test": set(), "shape": set(), "letter": set()}
    for (session, task, _), events in tables.items():
        if task == "imagery":
            rows = events[events["event_type"] == 2]
            for index in rows["category_index"].dropna().astype(int):
                target = stimuli.imagery_target(int(index))
                if target is not None:
                    needed["shape" if target.startswith("colorExpStim") else "test"].add(target)
            continue
        kind = next(kind for kind, prefix in SESSION_PREFIXES.items() if session.startswith(prefix))
        names = events.loc[events["event_type"].isin([1, 2]), "stimulus_name"].dropna()
        needed[kind].update(names)
    return needed


def _stimulus_set(tables, size, rng):
    """A :class:`~bidsrecon.simulate.stimuli.StimulusSet` of every needed name, drawn from its name."""
    needed = _needed_stimuli(tables)
    photographs = {}

    def crop(name):
        if name not in photographs:
            photographs[name] = images.load_photograph(name)
        return images.photograph_crop(photographs[name], size, rng)

    sources = list(images.TRAINING_PHOTOGRAPHS) + list(images.TEXTURE_KINDS)
    entries = []
    for index, name in enumerate(sorted(needed["training"])):
        source = sources[index % len(sources)]
        pixels = images.texture(source, size, rng) if source in images.TEXTURE_KINDS else crop(source)
        entries.append((name, "training", pixels))
    for index, name in enumerate(sorted(needed["test"])):
        entries.append((name, "test", crop(images.TEST_PHOTOGRAPHS[index % len(images.TEST_PHOTOGRAPHS)])))
    for name in sorted(needed["shape"]):
        match = _SHAPE.fullmatch(name)
        if not match or match["colour"] not in images.SHAPE_COLOURS or match["shape"] not in images.SHAPE_NAMES:
            raise ValueError(f"cannot draw shape stimulus {name!r}")
        entries.append((name, "shape", images.colour_shape(match["colour"], match["shape"], size)))
    for name in sorted(needed["letter"]):
        match = _LETTER.fullmatch(name)
        if not match:
            raise ValueError(f"cannot draw letter stimulus {name!r}")
        entries.append((name, "letter", images.centred_text(match["letter"], size, 0.6)))
    catalogue = tuple(stimuli.Stimulus(name, name, 0, 0, kind) for name, kind, _ in entries)
    return stimuli.StimulusSet(catalogue, np.stack([pixels for _, _, pixels in entries]))


def _write_stimuli(stimulus_set, folder):
    """Natural images as ``<name>.JPEG`` (ImageNet's spelling), shapes and letters as PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    for stimulus, pixels in zip(stimulus_set.stimuli, stimulus_set.pixels):
        image = Image.fromarray(pixels)
        if stimulus.kind in ("training", "test"):
            image.save(folder / f"{stimulus.name}.JPEG", format="JPEG", quality=_JPEG_QUALITY)
        else:
            image.save(folder / f"{stimulus.name}.png")


def annex_folder(folder):
    """Turn every file of ``folder`` into a git-annex link (``.git/annex/objects/xx/yy/KEY/KEY``).

    As ``git annex add`` leaves a file in an annexed dataset: the content moved into the annex
    under its MD5E key, read-only, and a relative symbolic link in its place.
    """
    folder = Path(folder)
    files = sorted(path for path in folder.rglob("*")
                   if path.is_file() and ".git" not in path.relative_to(folder).parts)
    for path in files:
        content = path.read_bytes()
        key = f"MD5E-s{len(content)}--{hashlib.md5(content).hexdigest()}{path.suffix}"
        digest = hashlib.md5(key.encode()).hexdigest()
        target = folder / ".git" / "annex" / "objects" / digest[:3] / digest[3:6] / key / key
        target.parent.mkdir(parents=True, exist_ok=True)
        path.replace(target)
        target.chmod(0o444)
        path.symlink_to(os.path.relpath(target, path.parent))


# --- the brain -------------------------------------------------------------------------------

def _subject(preset, stimulus_set, seed, subject):
    """The simulated subject whose brain sees ``stimulus_set`` (and the imagery cue and rating screens)."""
    screens = np.stack([images.centred_text(CUE_TEXT, preset.image_size, 0.12),
                        images.centred_text(RATING_TEXT, preset.image_size, 0.12)])
    maps = feature_maps(np.concatenate([stimulus_set.pixels, screens]))
    number = int(subject) if subject.isdigit() else 1
    anatomy = brain.make_anatomy(preset.volume_shape, preset.voxel_size_mm, preset.visual_fraction,
                                 generator(seed, number, 0))
    model = brain.make_voxel_model(anatomy, generator(seed, number, 1))
    reference = np.array([stimulus.kind == "training" for stimulus in stimulus_set.stimuli] + [False, False])
    responses = brain.stimulus_responses(model, maps, reference)
    return SubjectSimulation(subject, anatomy, model, responses, [], 1.0, generator(seed, number, 3))


def _write_rois(bids_dir, simulation, preset):
    label = simulation.label
    for name, mask in brain.roi_masks(simulation.anatomy).items():
        _write_nifti(bids_dir / f"sourcedata/sub-{label}/anat/sub-{label}_mask_{name}.nii.gz", mask,
                     simulation.anatomy.affine, (preset.voxel_size_mm,) * 3, np.uint8)
