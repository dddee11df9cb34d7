"""``--bdata-dir``: participants planned from the Kamitani lab's preprocessed BData files.

The lab's files (:mod:`bidsrecon.labformats.bdata`) take the place of the runs and of their
preprocessing: each file's samples (one per stimulus block, as the lab made them) and trials are
written into the work dir when the participant is planned, so every file is read and checked
before the long work starts, and the workflow's decoding, reconstruction, evaluation and report
run on them as on samples of our own. The files are named in the output as ``bids:bdata:<file>``
(the folder is a source dataset of the output, linked as ``bdata``).

With ``--decoders-dir`` the lab's own trained decoders (the cookbook's tree,
:mod:`bidsrecon.decoding.lab_tree`) are checked against the files and the encoder here too, and
their description, with the files' column order, written into the work dir for the decoding
stage: nothing is fitted, and only the test images are read.
"""
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from bidsrecon.bids.derivatives import dataset_uri
from bidsrecon.bids.stimuli import find_stimuli
from bidsrecon.console import say
from bidsrecon.decoding.lab_tree import check_lab_tree, columns_to_files, roi_folder
from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_NOTHING_SELECTED, BidsReconError
from bidsrecon.labformats.bdata import bdata_trials
from bidsrecon.labformats.decoded_features import check_bdpy_names
from bidsrecon.participant_plan import ParticipantPlan, write_if_changed
from bidsrecon.recon.correction import correction_statistics
from bidsrecon.spec import TRAINING

#: The names the output's ``DatasetLinks`` give the BData folder and the lab's decoder tree.
BDATA_LINK = "bdata"
LAB_DECODERS_LINK = "decoders"
_FILE = re.compile(r"sub-([A-Za-z0-9]+)_.+\.(h5|mat)")


def bdata_participants(bdata_dir, labels=None):
    """The BData files of each participant in ``bdata_dir``: ``{label: [files]}``, sorted.

    Raises
    ------
    BidsReconError
        Exit 18 when the folder holds no ``sub-<label>_*.h5|.mat`` file, or a label asked for has none.
    """
    found = {}
    for path in sorted(Path(bdata_dir).iterdir()):
        match = _FILE.fullmatch(path.name)
        if match and path.is_file():
            found.setdefault(match.group(1), []).append(path)
    if not found:
        raise BidsReconError(f"--bdata-dir {bdata_dir}: no BData file (sub-<label>_<session>_*.h5 or .mat) in it",
                             EXIT_NOTHING_SELECTED)
    if not labels:
        return found
    wanted = list(dict.fromkeys(label.removeprefix("sub-") for label in labels))
    unknown = [label for label in wanted if label not in found]
    if unknown:
        raise BidsReconError(f"participant label(s) {', '.join(unknown)} have no file in --bdata-dir {bdata_dir}; "
                             f"it has files of: {', '.join(sorted(found))}", EXIT_NOTHING_SELECTED)
    return {label: found[label] for label in wanted}


def plan_bdata_participant(subject, files, spec, config, encoder_shapes=None):
    """Read one participant's BData files, write their samples, trials, mask and stimuli table into
    the work dir, and return the participant's plan (no runs).

    With ``config.decoders_dir`` (the lab's decoder tree), ``encoder_shapes`` gives every layer of
    the encoder and its shape at ``--image-size``; the tree is checked against them and the files.
    """
    if config.decoders_dir and "feature_std" in correction_statistics(config.feature_correction):
        raise BidsReconError(
            f"--feature-correction {config.feature_correction} needs each channel's SD within the training images' "
            f"features, which the lab's decoders in {config.decoders_dir} do not hold (each unit's training mean and "
            "SD only, y_mean and y_norm). Use --feature-correction spread (the default) or none.", EXIT_BAD_ARGUMENTS)
    samples, trials, mask, columns = bdata_trials(files, spec, roi=config.bdata_roi)
    work = Path(config.work_dir) / f"sub-{subject}"
    (work / "bdata").mkdir(parents=True, exist_ok=True)
    lab_decoders = None
    if config.decoders_dir:
        description = check_lab_tree(config.decoders_dir, subject, roi_folder(config.bdata_roi), samples.shape[1],
                                     encoder_shapes, config.layers)
        # The tree's rows are the files' ROI columns; the samples are in the mask's order.
        description["VoxelIndices"] = columns_to_files(columns)
        lab_decoders = work / "bdata" / f"sub-{subject}_desc-lab_decoders.json"
        write_if_changed(lab_decoders, json.dumps(description, indent=1))
    trials = trials.assign(source=[dataset_uri(BDATA_LINK, config.bdata_dir, Path(config.bdata_dir) / name)
                                   for name in trials["source"]])
    trials["sample"] = trials.groupby("source").cumcount()
    trials_files, samples_files = [], []
    for set_name, rows in trials.groupby("set", sort=False):
        stem = work / "bdata" / f"sub-{subject}_set-{set_name}"
        write_if_changed(f"{stem}_trials.tsv", rows.to_csv(sep="\t", index=False))
        _save_if_changed(f"{stem}_samples.npy", samples[rows.index.to_numpy()])
        trials_files.append(f"{stem}_trials.tsv")
        samples_files.append(f"{stem}_samples.npy")
    mask_file = work / "bdata" / f"sub-{subject}_desc-{config.bdata_roi}_mask.nii.gz"
    if not mask_file.is_file() or not _same_image(mask_file, mask):
        nib.save(mask, mask_file)
    if config.save_decoded_features == "bdpy":  # they name files written at the very end: checked now
        check_bdpy_names((set_name, rows["stimulus"], f"{source}'s value map")
                         for (set_name, source), rows in trials.groupby(["set", "source"], sort=False))
    # The lab's decoders need no training image (their features are in the tree's y_mean, y_norm).
    names = sorted(set(trials.loc[trials["set"] != TRAINING, "stimulus"] if lab_decoders else trials["stimulus"]))
    stimuli = find_stimuli(names, config.stimuli_dirs or (Path(config.bids_dir) / "stimuli",))
    stimuli_file = work / "stimuli.tsv"
    write_if_changed(stimuli_file, pd.DataFrame({"stimulus": names, "path": [stimuli[n] for n in names]})
                      .to_csv(sep="\t", index=False))
    say(f"sub-{subject}: {len(files)} BData files, {int((trials['set'] == TRAINING).sum())} training samples, "
        f"{samples.shape[1]} voxels in {config.bdata_roi}"
        + (f"; applying the lab's decoders of {', '.join(description['Layers'])} in {config.decoders_dir}"
           if lab_decoders else ""))
    # The lab's files come preprocessed: no normalisation of ours applies ("bdata" names theirs).
    return ParticipantPlan(subject, [], trials_files, str(stimuli_file), [], normalise="bdata",
                           bdata_files=[str(path) for path in files], samples_files=samples_files,
                           mask_file=str(mask_file), bdata_task=_training_task(spec),
                           sources=list(dict.fromkeys(trials["source"])),
                           lab_decoders_file=str(lab_decoders) if lab_decoders else None)


def _training_task(spec):
    """The task label of the specification's training runs (``perception``), or ``bdata`` when its
    pattern is not one plain label."""
    task = spec.training.entities.get("task", "")
    return task if re.fullmatch(r"[A-Za-z0-9]+", task) else "bdata"


def _same_image(path, image):
    saved = nib.load(path)
    return (saved.shape == image.shape and (saved.affine == image.affine).all()
            and (saved.get_fdata() == image.get_fdata()).all())


def _save_if_changed(path, array):
    path = Path(path)
    if path.is_file():
        try:
            if np.array_equal(np.load(path, allow_pickle=False), array):
                return
        except (OSError, ValueError):
            pass
    np.save(path, array, allow_pickle=False)
