"""BData input (bidsrecon.labformats.bdata): files written by bdpy's own BData API read back exactly."""
import bdpy
import numpy as np
import pytest

from bidsrecon.errors import BidsReconError
from bidsrecon.labformats.bdata import bdata_trials, read_bdata, set_of_file, voxel_grid
from bidsrecon.spec import load_spec

SPEC = load_spec("ds001506")


def write_bdata(path, voxels, labels, runs, roi_flags, positions, *, label_key="stimulus_name"):
    """A BData file as the lab makes them, through bdpy's API: voxels with their positions (mm), Run,
    labels by value map."""
    names = sorted(set(labels))
    numbers = {name: float(index + 1) for index, name in enumerate(names)}
    data = bdpy.BData()
    data.add(voxels, "VoxelData")
    data.add(np.asarray(runs, dtype=float)[:, None], "Run")
    data.add(np.array([numbers[label] for label in labels])[:, None], label_key)
    data.add_metadata("ROI_VC", roi_flags.astype(float), where="VoxelData")
    for axis, key in enumerate(("voxel_x", "voxel_y", "voxel_z")):
        data.add_metadata(key, positions[:, axis], where="VoxelData")
    data.add_vmap(label_key, {number: name for name, number in numbers.items()})
    data.save(str(path))
    return path


@pytest.fixture
def participant(tmp_path):
    rng = np.random.default_rng(0)
    n_voxels = 30
    flags = np.ones(n_voxels, dtype=bool)
    flags[:5] = False  # five voxels outside ROI_VC
    # 2-mm voxels of a 4 x 4 x 2 grid, in a shuffled column order
    grid = np.stack(np.meshgrid(np.arange(4), np.arange(4), np.arange(2), indexing="ij"), -1).reshape(-1, 3)
    positions = (rng.permutation(grid)[:n_voxels] * 2.0 + [-40, -90, 10])
    train_labels = [f"n0000_{index % 12}" for index in range(48)]
    letters = ["letter_A", "letter_C"] * 3
    files = {
        "training": write_bdata(tmp_path / "sub-01_perceptionNaturalImageTraining_original_VC.h5",
                                rng.normal(size=(48, n_voxels)), train_labels, np.repeat(np.arange(1, 5), 12), flags,
                                positions),
        "letters": write_bdata(tmp_path / "sub-01_perceptionLetterImage_original_VC.h5",
                               rng.normal(size=(6, n_voxels)), letters, [1, 1, 2, 2, 3, 3], flags, positions),
    }
    return files, flags, positions


def test_read_bdata_equals_bdpy(participant):
    files, flags, _ = participant
    ours = read_bdata(files["letters"])
    theirs = bdpy.BData(str(files["letters"]))
    np.testing.assert_array_equal(ours.dataset[:, ours.flagged("ROI_VC")], theirs.select("ROI_VC"))
    assert ours.labels("stimulus_name") == list(theirs.get_labels("stimulus_name"))
    np.testing.assert_array_equal(ours.column("Run"), theirs.select("Run")[:, 0])


def test_bdata_trials_orders_sets_and_voxels(participant):
    files, flags, positions = participant
    samples, trials, mask, columns = bdata_trials([files["letters"], files["training"]], SPEC)
    assert samples.shape == (54, int(flags.sum())) and samples.dtype == np.float32
    assert list(trials["set"].unique()) == ["training", "letters"]
    # The columns are the mask's voxels in C order, each where its voxel_x/y/z puts it.
    np.testing.assert_array_equal(mask.affine, [[2, 0, 0, -40], [0, 2, 0, -90], [0, 0, 2, 10], [0, 0, 0, 1]])
    in_mask = np.argwhere(np.asarray(mask.dataobj) > 0)  # C order
    roi_positions = positions[flags]
    order = [int(np.flatnonzero((roi_positions == mask.affine[:3, :3] @ ijk + mask.affine[:3, 3]).all(1))[0])
             for ijk in in_mask]
    training = bdpy.BData(str(files["training"]))
    np.testing.assert_array_equal(samples[:48], training.select("ROI_VC")[:, order].astype(np.float32))
    np.testing.assert_array_equal(columns, order)  # where each column is among the file's ROI columns
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


def test_voxel_grid_refuses_off_grid_and_duplicate_positions():
    with pytest.raises(BidsReconError, match="regular grid"):
        voxel_grid([[0, 0, 0], [2, 0, 0], [3.1, 0, 0]], "f.h5")
    with pytest.raises(BidsReconError, match="same voxel_x/y/z"):
        voxel_grid([[0, 0, 0], [0, 0, 0]], "f.h5")


def test_bdata_errors_name_the_file(participant, tmp_path):
    files, _, _ = participant
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
