"""Noise ceiling of simulated datasets: regenerated noise-free responses against measured samples."""
import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from bidsrecon.errors import BidsReconError
from bidsrecon.simulate.ceiling import (
    ceiling_identification,
    noise_free_responses,
    simulated_noise_ceiling,
    simulation_record,
)
from bidsrecon.simulate.presets import PRESETS


@pytest.fixture(scope="module")
def tiny_truth(tiny_dataset):
    return noise_free_responses(tiny_dataset, "01")


def test_record_of_the_tiny_dataset(tiny_dataset):
    record = simulation_record(tiny_dataset)
    assert record["preset"] == "tiny" and record["seed"] == 0


def test_datasets_not_from_the_simulator_give_none(tmp_path):
    assert simulated_noise_ceiling(tmp_path, "01") is None  # no dataset_description.json
    (tmp_path / "dataset_description.json").write_text(json.dumps({
        "Name": "x", "BIDSVersion": "1.10.0", "GeneratedBy": [{"Name": "fMRIPrep"}]}))
    assert simulation_record(tmp_path) is None
    assert noise_free_responses(tmp_path, "01") is None
    assert simulated_noise_ceiling(tmp_path, "01") is None


def test_regenerated_responses_match_the_dataset(tiny_dataset, tiny_truth):
    preset = PRESETS["tiny"]
    assert tiny_truth.visual_mask.shape == preset.volume_shape
    assert tiny_truth.responses.shape == (len(tiny_truth.stimuli), int(tiny_truth.visual_mask.sum()))
    assert {p.stem for p in (tiny_dataset / "stimuli").glob("*.png")} == set(tiny_truth.stimuli)
    # The visual voxels are those of the ROI masks the simulator wrote for the subject.
    union = np.zeros(preset.volume_shape, dtype=bool)
    for path in (tiny_dataset / "sourcedata/sub-01/anat").glob("*_mask_*.nii.gz"):
        union |= np.asanyarray(nib.load(path).dataobj) > 0
    assert np.array_equal(union, tiny_truth.visual_mask)
    # Regeneration is deterministic.
    again = noise_free_responses(tiny_dataset, "01")
    assert np.array_equal(again.responses, tiny_truth.responses)


def test_ceiling_of_the_tiny_dataset(tiny_dataset):
    ceilings = simulated_noise_ceiling(tiny_dataset, "01")
    assert set(ceilings) == {"natural", "shapes", "letters", "imagery"}
    assert all(0.0 <= value <= 1.0 for value in ceilings.values())
    # At the preset's noise level the 4 natural test images are told apart from their
    # measured samples (seed 0: 1.0; 0.92 at noise 8%, 0.54 on average at 1000%).
    assert ceilings["natural"] >= 0.9


def test_a_dataset_that_does_not_regenerate_is_refused(tiny_dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dataset, copy)
    description = json.loads((copy / "dataset_description.json").read_text())
    text = description["GeneratedBy"][0]["Description"]
    description["GeneratedBy"][0]["Description"] = text.replace("seed 0", "seed 1")
    (copy / "dataset_description.json").write_text(json.dumps(description))
    with pytest.raises(BidsReconError, match="does not hold the stimuli"):
        noise_free_responses(copy, "01")
    with pytest.raises(BidsReconError, match="no simulated subject"):
        noise_free_responses(tiny_dataset, "02")


def test_given_samples_in_a_larger_mask(tiny_dataset, tiny_truth):
    # Samples in the whole grid (a brain mask is a superset of the visual voxels): the noise-free
    # responses plus a little noise identify every item; shuffled labels do not.
    rng = np.random.default_rng(0)
    mask = np.ones(tiny_truth.visual_mask.shape, dtype=bool)
    visual_columns = np.flatnonzero(tiny_truth.visual_mask[mask])
    names = list(tiny_truth.stimuli[:12])
    rows = [tiny_truth.stimuli.index(name) for name in names]
    samples = rng.normal(0, 0.05, (2 * len(names), mask.sum()))  # two trials per item
    samples[:, visual_columns] += np.tile(tiny_truth.responses[rows], (2, 1))
    trials = {"perceived": (names + names, samples)}
    assert simulated_noise_ceiling(tiny_dataset, "01", trials, mask=mask) == {"perceived": 1.0}
    # A voxel selection that kept only the visual voxels gives the same.
    selected = {"perceived": (names + names, samples[:, visual_columns])}
    assert simulated_noise_ceiling(tiny_dataset, "01", selected, mask=mask,
                                   voxel_indices=visual_columns) == {"perceived": 1.0}
    wrong = names[6:] + names[:6]  # every sample labelled with another item
    shuffled = {"perceived": (wrong + wrong, samples)}
    assert simulated_noise_ceiling(tiny_dataset, "01", shuffled, mask=mask)["perceived"] < 0.75
    with pytest.raises(ValueError, match="mask"):
        simulated_noise_ceiling(tiny_dataset, "01", trials)


def test_ceiling_falls_with_noise(tiny_truth):
    rng = np.random.default_rng(1)
    truth = tiny_truth.responses[:40]
    scale = truth.std()
    ceilings = [ceiling_identification(truth + rng.normal(0, level * scale, truth.shape),
                                       truth).mean() for level in (0.1, 1.0, 3.0, 30.0)]
    assert ceilings[0] == 1.0
    assert ceilings[0] >= ceilings[1] >= ceilings[2] > ceilings[3]
    assert abs(ceilings[3] - 0.5) < 0.15  # noise alone: chance


def test_ceiling_identification_centres_each_voxel():
    # A response shared by every item (here huge) must not decide identification.
    rng = np.random.default_rng(2)
    items = rng.normal(size=(6, 30))
    shared = 100 * rng.normal(size=30)
    assert ceiling_identification(items + 0.1 * rng.normal(size=items.shape), items + shared).mean() == 1.0
    with pytest.raises(ValueError, match="same"):
        ceiling_identification(items, items[:3])
