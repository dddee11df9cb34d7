"""The cookbook's FastL2LiR decoder folders, with the lab's own code (bdpy, fastl2lir) as the other side."""
import json

import numpy as np
import pytest
import scipy.io
import scipy.sparse

from bidsrecon.decoding.fastl2lir_folders import (
    DESCRIPTION_FILE,
    model_folder,
    read_fastl2lir_folders,
    read_model_folder,
    write_fastl2lir_folders,
)
from bidsrecon.decoding.per_unit import PerUnitDecoder
from bidsrecon.errors import BidsReconError
from bidsrecon.labformats.matfile import write_mat_array

bdpy_dataform = pytest.importorskip("bdpy.dataform")
bdpy_ml = pytest.importorskip("bdpy.ml")
fastl2lir = pytest.importorskip("fastl2lir")

N_SAMPLES, N_VOXELS = 40, 30


def _data(unit_shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N_SAMPLES, N_VOXELS))
    y = x[:, :int(np.prod(unit_shape))].reshape((N_SAMPLES, *unit_shape)) + rng.standard_normal((N_SAMPLES, *unit_shape))
    return x, y, rng.standard_normal((5, N_VOXELS))


def _train_like_the_cookbook(folder, x, y, chunk_axis):
    """featdec_fastl2lir_train.py's steps: normalisation saved with save_array, then ModelTraining
    of FastL2LiR in the 'bdmodel' format."""
    folder.mkdir(parents=True)
    norm = {"x_mean": x.mean(axis=0)[np.newaxis], "x_norm": x.std(axis=0, ddof=1)[np.newaxis],
            "y_mean": y.mean(axis=0)[np.newaxis], "y_norm": y.std(axis=0, ddof=1)[np.newaxis]}
    for key, value in norm.items():
        bdpy_dataform.save_array(str(folder / f"{key}.mat"), value, key=key, dtype=np.float32, sparse=False)
    # Every voxel per unit: fastl2lir 0.11's voxel selection fails under numpy 2 (it assigns a
    # 1-element array to a scalar); the selection's zeros are exercised by our own decoders below.
    training = bdpy_ml.ModelTraining(
        fastl2lir.FastL2LiR(), x, y, X_normalize={"mean": norm["x_mean"], "std": norm["x_norm"]},
        Y_normalize={"mean": norm["y_mean"], "std": norm["y_norm"]},
        model_parameters={"alpha": 10.0, "n_feat": N_VOXELS, "dtype": np.float32}, dtype=np.float32,
        chunk_axis=chunk_axis, save_format="bdmodel", save_path=str(folder), verbose=0)
    training.run()
    return norm


def _predict_like_the_cookbook(folder, x_test, chunk_axis=None):
    """featdec_fastl2lir_predict.py's steps: load_array, ModelTest with 'bdmodel', de-normalise."""
    load = {key: bdpy_dataform.load_array(str(folder / f"{key}.mat"), key=key)
            for key in ("x_mean", "x_norm", "y_mean", "y_norm")}
    test = bdpy_ml.ModelTest(fastl2lir.FastL2LiR(), (x_test - load["x_mean"]) / load["x_norm"],
                             model_format="bdmodel", model_path=str(folder), dtype=np.float32,
                             chunk_axis=chunk_axis, verbose=0)
    return test.run() * load["y_norm"] + load["y_mean"]


@pytest.mark.parametrize("unit_shape, chunk_axis", [((3, 2, 2), None), ((3, 2, 2), 1), ((12,), None)])
def test_cookbook_folder_predicts_as_fastl2lir(tmp_path, unit_shape, chunk_axis):
    x, y, x_test = _data(unit_shape)
    folder = model_folder(tmp_path, "conv", "sub-01", "VC")
    _train_like_the_cookbook(folder, x, y, chunk_axis)
    assert (folder / ("W" if chunk_axis else "W.mat")).exists()
    expected = _predict_like_the_cookbook(folder, x_test, chunk_axis)

    decoder, shape = read_model_folder(folder)
    assert shape == unit_shape
    predicted = decoder.predict(x_test).reshape((-1, *shape))
    np.testing.assert_allclose(predicted, expected, rtol=1e-4, atol=1e-5)


def test_cookbook_root_with_a_description(tmp_path):
    """A cookbook tree is read whole once its description ties its columns to the mask."""
    x, y, x_test = _data((3, 2, 2))
    _train_like_the_cookbook(model_folder(tmp_path, "conv", "sub-01", "VC"), x, y, None)
    _train_like_the_cookbook(model_folder(tmp_path, "fc", "sub-01", "VC"), x, y.reshape(N_SAMPLES, -1), None)
    indices = list(range(100, 100 + N_VOXELS))
    (tmp_path / DESCRIPTION_FILE).write_text(json.dumps(
        {"Subject": "sub-01", "ROI": "VC", "Layers": {"conv": [3, 2, 2], "fc": [12]}, "Voxels": N_VOXELS,
         "VoxelIndices": indices}))
    folders = read_fastl2lir_folders(tmp_path)
    assert list(folders.decoders) == ["conv", "fc"] and folders.unit_shapes["fc"] == (12,)
    np.testing.assert_array_equal(folders.voxel_indices, indices)
    # Two float32 fits of the same data in two shapes: equal to float32 rounding (1.2e-5 apart on one
    # machine, in one of 60 values), as in test_cookbook_folder_predicts_as_fastl2lir.
    np.testing.assert_allclose(folders.decoders["fc"].predict(x_test),
                               folders.decoders["conv"].predict(x_test), rtol=1e-4, atol=1e-5)


def _our_decoders(seed=0):
    x, y, x_test = _data((3, 2, 2), seed)
    fc = x[:, :5] @ np.random.default_rng(seed).standard_normal((5, 4))
    decoders = {"conv": PerUnitDecoder(n_voxels=7, alpha=10.0).fit(x, y.reshape(N_SAMPLES, -1)),
                "fc": PerUnitDecoder(n_voxels=7, alpha=10.0).fit(x, fc)}
    return decoders, {"conv": (3, 2, 2), "fc": (4,)}, x_test


def test_ours_predict_alike_with_the_lab_code(tmp_path):
    decoders, shapes, x_test = _our_decoders()
    write_fastl2lir_folders(tmp_path, decoders, shapes, subject="sub-01")
    for layer, decoder in decoders.items():
        folder = model_folder(tmp_path, layer, "sub-01", "voxelmask")
        weights = bdpy_dataform.load_array(str(folder / "W.mat"), key="W")
        assert weights.shape == (N_VOXELS, *shapes[layer])
        # The lab's W is zero outside each unit's 7 voxels.
        assert (np.count_nonzero(weights.reshape(N_VOXELS, -1), axis=0) == 7).all()
        expected = decoder.predict(x_test).reshape((-1, *shapes[layer]))
        np.testing.assert_allclose(_predict_like_the_cookbook(folder, x_test), expected, rtol=1e-4, atol=1e-5)


def test_round_trip(tmp_path):
    decoders, shapes, x_test = _our_decoders()
    write_fastl2lir_folders(tmp_path, decoders, shapes, subject="sub-01", voxel_indices=np.arange(N_VOXELS) * 2,
                            voxel_mask={"File": "mask.nii.gz", "Voxels": 2 * N_VOXELS})
    folders = read_fastl2lir_folders(tmp_path)
    assert folders.unit_shapes == shapes
    assert folders.description["VoxelMask"]["Voxels"] == 2 * N_VOXELS
    np.testing.assert_array_equal(folders.voxel_indices, np.arange(N_VOXELS) * 2)
    for layer, decoder in decoders.items():
        loaded = folders.decoders[layer]
        np.testing.assert_array_equal(loaded.selected_voxels_, decoder.selected_voxels_)
        np.testing.assert_allclose(loaded.coef_, decoder.coef_, rtol=1e-6)
        np.testing.assert_allclose(loaded.predict(x_test), decoder.predict(x_test), rtol=1e-5, atol=1e-6)
    # Read back, written again: the same files' content.
    write_fastl2lir_folders(tmp_path / "again", folders.decoders, folders.unit_shapes, subject="sub-01")
    again = read_fastl2lir_folders(tmp_path / "again")
    np.testing.assert_array_equal(again.decoders["conv"].coef_, folders.decoders["conv"].coef_)


def test_matlab_v5_files(tmp_path):
    """Folders written by MATLAB (v5 files, W a MATLAB sparse matrix) read the same."""
    decoders, shapes, x_test = _our_decoders()
    decoder, folder = decoders["fc"], tmp_path / "model"
    folder.mkdir()
    weights = np.zeros((N_VOXELS, 4))
    np.put_along_axis(weights.T, decoder.selected_voxels_, decoder.coef_, axis=1)
    arrays = {"W": scipy.sparse.csc_matrix(weights), "b": decoder.intercept_[None],
              "x_mean": decoder.voxel_mean_[None], "x_norm": decoder.voxel_std_[None],
              "y_mean": decoder.feature_mean_[None], "y_norm": decoder.feature_std_[None]}
    for key, value in arrays.items():
        scipy.io.savemat(folder / f"{key}.mat", {key: value})
    loaded, shape = read_model_folder(folder)
    assert shape == (4,)
    np.testing.assert_allclose(loaded.predict(x_test), decoder.predict(x_test), rtol=1e-10)


@pytest.fixture
def written(tmp_path):
    decoders, shapes, _ = _our_decoders()
    write_fastl2lir_folders(tmp_path, decoders, shapes, subject="sub-01")
    return tmp_path


def _edit_description(root, **fields):
    path = root / DESCRIPTION_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def _error(root, match, **kwargs):
    with pytest.raises(BidsReconError, match=match) as caught:
        read_fastl2lir_folders(root, **kwargs)
    return str(caught.value)


def test_missing_description(written):
    (written / DESCRIPTION_FILE).unlink()
    assert DESCRIPTION_FILE in _error(written, "not found")


def test_unknown_layer(written):
    _error(written, r"\['pool5'\] asked for", layers=["conv", "pool5"])


def test_layer_shape_mismatch(written):
    _edit_description(written, Layers={"conv": [3, 4], "fc": [4]})
    message = _error(written, r"shape \[3, 2, 2\].*records \[3, 4\]")
    assert str(model_folder(written, "conv", "sub-01", "voxelmask")) in message


def test_voxel_count_mismatch(written):
    _edit_description(written, Voxels=N_VOXELS + 1)
    _error(written, f"uses {N_VOXELS} voxels.*records {N_VOXELS + 1}")


def test_voxel_indices_malformed(written):
    _edit_description(written, VoxelIndices=[0, 1, 2])
    _error(written, "VoxelIndices")


def test_weights_disagree_with_normalisation(written):
    folder = model_folder(written, "fc", "sub-01", "voxelmask")
    write_mat_array(folder / "x_mean.mat", "x_mean", np.zeros((1, N_VOXELS - 1)))
    write_mat_array(folder / "x_norm.mat", "x_norm", np.ones((1, N_VOXELS - 1)))
    assert str(folder / "W.mat") in _error(written, "do not fit x_mean.mat's 29 voxels")


def test_missing_weights(written):
    folder = model_folder(written, "conv", "sub-01", "voxelmask")
    (folder / "W.mat").unlink()
    _error(written, "neither W.mat nor W/")


def test_wrong_key(written):
    folder = model_folder(written, "conv", "sub-01", "voxelmask")
    write_mat_array(folder / "b.mat", "bias", np.zeros((1, 3, 2, 2)))
    assert str(folder / "b.mat") in _error(written, "holds no 'b' array")


def test_stage_applies_folders_to_mask_samples(tmp_path):
    """The decoding stage's use: samples in the whole mask, the folders' voxels picked, trials averaged."""
    import pandas as pd

    from bidsrecon.decoding.folders_stage import apply_fastl2lir_folders

    decoders, shapes, x_test = _our_decoders()
    indices = np.arange(N_VOXELS) * 2 + 1
    write_fastl2lir_folders(tmp_path, decoders, shapes, subject="sub-01", voxel_indices=indices,
                            voxel_mask={"Voxels": 2 * N_VOXELS + 1})
    samples = np.zeros((len(x_test) * 2, 2 * N_VOXELS + 1))
    samples[:, indices] = np.repeat(x_test, 2, axis=0) + np.tile([[0.5], [-0.5]], (len(x_test), 1))
    trials = pd.DataFrame({"set": "test", "stimulus": np.repeat([f"im{i}" for i in range(len(x_test))], 2)})
    result = apply_fastl2lir_folders(samples, trials, tmp_path)
    assert list(result.items["stimulus"]) == [f"im{i}" for i in range(len(x_test))]
    assert result.layers == ["conv", "fc"] and result.decoded["conv"].shape == (len(x_test), 3, 2, 2)
    np.testing.assert_allclose(result.decoded["fc"], decoders["fc"].predict(x_test), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.train_mean["conv"].reshape(-1), decoders["conv"].feature_mean_, rtol=1e-6)
    with pytest.raises(BidsReconError, match=f"hold {2 * N_VOXELS} voxels.*{N_VOXELS} of the voxel mask's"):
        apply_fastl2lir_folders(samples[:, :-1], trials, tmp_path)


def test_stage_applies_the_labs_folders(tmp_path):
    """The lab's trained folders, with the description a user writes beside them, decoded as the lab's
    predict script decodes them: the samples in the whole mask, the folders' voxels picked by VoxelIndices."""
    import pandas as pd

    from bidsrecon.decoding.folders_stage import apply_fastl2lir_folders
    from bidsrecon.features.spread import spread_from_moments

    x, y, x_test = _data((3, 2, 2))
    folder = model_folder(tmp_path, "conv", "sub-01", "VC")
    norm = _train_like_the_cookbook(folder, x, y, None)
    expected = _predict_like_the_cookbook(folder, x_test)
    n_mask = N_VOXELS + 10
    indices = np.arange(N_VOXELS) + 5
    description = {"Subject": "sub-01", "ROI": "VC", "Layers": {"conv": [3, 2, 2]}, "Voxels": N_VOXELS,
                   "VoxelIndices": [int(i) for i in indices], "VoxelMask": {"Voxels": n_mask}}
    (tmp_path / DESCRIPTION_FILE).write_text(json.dumps(description))
    samples = np.random.default_rng(1).standard_normal((len(x_test), n_mask))
    samples[:, indices] = x_test
    trials = pd.DataFrame({"set": "test", "stimulus": [f"im{i}" for i in range(len(x_test))]})
    result = apply_fastl2lir_folders(samples, trials, tmp_path)
    np.testing.assert_allclose(result.decoded["conv"], expected, rtol=1e-4, atol=1e-5)
    assert result.feature_std is None  # the folders do not hold the lab's per-channel SD
    # Without a recorded spread, it comes from the units' training mean and SD.
    mean, sd = norm["y_mean"][0], norm["y_norm"][0]
    assert result.train_spread["conv"] == pytest.approx(spread_from_moments(mean, mean**2 + sd**2), rel=1e-5)
    # A recorded one (ours: the fitted spread) is used as is.
    (tmp_path / DESCRIPTION_FILE).write_text(json.dumps({**description, "TrainingSpread": {"conv": 0.25}}))
    assert apply_fastl2lir_folders(samples, trials, tmp_path).train_spread["conv"] == 0.25
