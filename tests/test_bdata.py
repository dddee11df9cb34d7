"""BData input (bidsrecon.labformats.bdata): files written by bdpy's own BData API read back exactly."""
import bdpy
import numpy as np
import pytest

from bidsrecon.errors import BidsReconError
from bidsrecon.labformats.bdata import bdata_trials, read_bdata, set_of_file
from bidsrecon.spec import load_spec

SPEC = load_spec("ds001506")


def write_bdata(path, voxels, labels, runs, roi_flags, *, label_key="stimulus_name"):
    """A BData file as the lab makes them, through bdpy's API: voxels, Run, labels by value map."""
    names = sorted(set(labels))
    numbers = {name: float(index + 1) for index, name in enumerate(names)}
    data = bdpy.BData()
    data.add(voxels, "VoxelData")
    data.add(np.asarray(runs, dtype=float)[:, None], "Run")
    data.add(np.array([numbers[label] for label in labels])[:, None], label_key)
    data.add_metadata("ROI_VC", roi_flags.astype(float), where="VoxelData")
    data.add_vmap(label_key, {number: name for name, number in numbers.items()})
    data.save(str(path))
    return path


@pytest.fixture
def participant(tmp_path):
    rng = np.random.default_rng(0)
    n_voxels = 30
    flags = np.ones(n_voxels, dtype=bool)
    flags[:5] = False  # five voxels outside ROI_VC
    train_labels = [f"n0000_{index % 12}" for index in range(48)]
    letters = ["letter_A", "letter_C"] * 3
    files = {
        "training": write_bdata(tmp_path / "sub-01_perceptionNaturalImageTraining_original_VC.h5",
                                rng.normal(size=(48, n_voxels)), train_labels, np.repeat(np.arange(1, 5), 12), flags),
        "letters": write_bdata(tmp_path / "sub-01_perceptionLetterImage_original_VC.h5",
                               rng.normal(size=(6, n_voxels)), letters, [1, 1, 2, 2, 3, 3], flags),
    }
    return files, flags


def test_read_bdata_equals_bdpy(participant):
    files, flags = participant
    ours = read_bdata(files["letters"])
    theirs = bdpy.BData(str(files["letters"]))
    np.testing.assert_array_equal(ours.dataset[:, ours.flagged("ROI_VC")], theirs.select("ROI_VC"))
    assert ours.labels("stimulus_name") == list(theirs.get_labels("stimulus_name"))
    np.testing.assert_array_equal(ours.column("Run"), theirs.select("Run")[:, 0])


def test_bdata_trials_orders_sets_and_keeps_roi(participant):
    files, flags = participant
    samples, trials = bdata_trials([files["letters"], files["training"]], SPEC)
    assert samples.shape == (54, int(flags.sum())) and samples.dtype == np.float32
    assert list(trials["set"].unique()) == ["training", "letters"]
    training = bdpy.BData(str(files["training"]))
    np.testing.assert_array_equal(samples[:48], training.select("ROI_VC").astype(np.float32))
    assert list(trials["stimulus"][:48]) == list(training.get_labels("stimulus_name"))
    assert list(trials["run"][48:]) == [1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize(("name", "expected"), [
    ("sub-01_perceptionNaturalImageTraining_original_VC.h5", "training"),
    ("sub-01_perceptionNaturalImageTest_original_VC.h5", "natural"),
    ("sub-01_perceptionArtificialImage_original_VC.h5", "shapes"),
    ("sub-01_perceptionLetterImage_original_VC.h5", "letters"),
    ("sub-01_imagery_original_VC.h5", "imagery"),
    ("sub-01_restingState_original_VC.h5", None),
])
def test_set_of_file(name, expected):
    assert set_of_file(name, SPEC) == expected


def test_bdata_errors_name_the_file(participant, tmp_path):
    files, _ = participant
    with pytest.raises(BidsReconError, match="no metadata key 'ROI_V1'"):
        bdata_trials([files["training"]], SPEC, roi="ROI_V1")
    with pytest.raises(BidsReconError, match="No training file"):
        bdata_trials([files["letters"]], SPEC)
    stray = tmp_path / "sub-01_restingState_original_VC.h5"
    stray.write_bytes(files["letters"].read_bytes())
    with pytest.raises(BidsReconError, match="restingState.*names no set"):
        bdata_trials([files["training"], stray], SPEC)
    broken = tmp_path / "sub-01_perceptionLetterImage_broken.h5"
    broken.write_bytes(b"not hdf5")
    with pytest.raises(BidsReconError, match="broken.h5 is not a BData file"):
        read_bdata(broken)
