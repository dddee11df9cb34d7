"""Tests of the saved decoder (safetensors + JSON sidecar) and of the decoded-features HDF5 file."""
import json
import pickle
import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bidsrecon.decoding import KernelRidgeDecoder
from bidsrecon.decoding.artifact import load_decoder, load_voxel_indices, save_decoder
from bidsrecon.decoding.decoded_features import load_decoded_features, save_decoded_features
from bidsrecon.decoding.sidecar import decoder_paths, read_decoder_description
from bidsrecon.encoders.base import file_sha256
from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_INPUT_MISSING, BidsReconError

N_IMAGES, N_REPEATS, N_VOXELS = 20, 3, 30
MASK_SHAPE = (4, 4, 3)
LAYERS = ["conv", "fc"]


def _write_mask(path, inside_positions, shape=MASK_SHAPE, affine=None, dtype=np.uint8):
    data = np.zeros(int(np.prod(shape)), dtype=dtype)
    data[inside_positions] = 1
    affine = np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine
    nib.save(nib.Nifti1Image(data.reshape(shape), affine), path)
    return path


def _fitted_decoder(n_voxels=N_VOXELS, seed=0):
    rng = np.random.default_rng(seed)
    image_index = np.repeat(np.arange(N_IMAGES), N_REPEATS)
    features = {"conv": rng.standard_normal((N_IMAGES, 12)), "fc": rng.standard_normal((N_IMAGES, 5))}
    weights = rng.standard_normal((17, n_voxels))
    signal = np.hstack([features["conv"], features["fc"]]) @ weights
    X = signal[image_index] + rng.standard_normal((len(image_index), n_voxels))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an alpha on the grid's edge is no concern here
        return KernelRidgeDecoder(alphas=np.logspace(-2, 2, 5), n_folds=4, random_state=3).fit(
            X, image_index, features)


@pytest.fixture
def saved(tmp_path):
    """A decoder saved with its mask and stimulus files; returns what a later run would hold."""
    decoder = _fitted_decoder()
    mask_file = _write_mask(tmp_path / "mask.nii.gz", np.arange(N_VOXELS))
    stimuli_dir = tmp_path / "stimuli"
    stimuli_dir.mkdir()
    names = [f"n{index:03d}" for index in range(N_IMAGES)]
    stimulus_files = {}
    for index, name in enumerate(names):
        stimulus_files[name] = stimuli_dir / f"{name}.png"
        stimulus_files[name].write_bytes(f"image {index}".encode())
    stem = tmp_path / "out" / "sub-01" / "decoder" / "sub-01_desc-kernelridge_decoder"
    save_decoder(stem, decoder, layers=LAYERS, encoder_name="vgg19", encoder_weights_sha256="ab" * 32,
                 image_size=224, training_stimuli=names,
                 training_stimulus_hashes=[file_sha256(stimulus_files[name]) for name in names],
                 voxel_mask_file=mask_file, software_version="0.1.0",
                 extra_fields={"VoxelSelection": {"Method": "none"}})
    return {"stem": stem, "decoder": decoder, "mask_file": mask_file, "stimulus_files": stimulus_files,
            "names": names, "tmp_path": tmp_path}


def _load_checked(saved, **overrides):
    arguments = {"expected_mask_file": saved["mask_file"], "expected_encoder": "vgg19",
                 "expected_weights_sha256": "ab" * 32, "expected_image_size": 224,
                 "stimulus_files": saved["stimulus_files"]}
    arguments.update(overrides)
    return load_decoder(saved["stem"], **arguments)


def test_loaded_decoder_gives_the_same_coefficients(saved):
    loaded = _load_checked(saved)
    X_test = np.random.default_rng(9).standard_normal((7, N_VOXELS))
    original = saved["decoder"].coefficients(X_test)
    reloaded = loaded.coefficients(X_test)
    assert list(reloaded) == LAYERS
    for layer in LAYERS:
        np.testing.assert_array_equal(reloaded[layer], original[layer])
    assert loaded.alpha_ == saved["decoder"].alpha_
    assert loaded.get_params()["n_folds"] == 4 and loaded.get_params()["random_state"] == 3
    assert loaded.get_params()["voxel_weights"] == "reliability"
    np.testing.assert_array_equal(loaded.voxel_weight_, saved["decoder"].voxel_weight_)  # repeats: not None
    np.testing.assert_array_equal(loaded.get_params()["alphas"], np.logspace(-2, 2, 5))
    np.testing.assert_array_equal(loaded.cv_scores_["fc"], saved["decoder"].cv_scores_["fc"])


def test_sidecar_names_what_the_decoder_applies_to(saved):
    arrays_path, sidecar_path = decoder_paths(saved["stem"])
    assert arrays_path.name == "sub-01_desc-kernelridge_decoder.safetensors"
    sidecar = json.loads(sidecar_path.read_text())
    assert sidecar == read_decoder_description(saved["stem"])
    assert sidecar["Encoder"] == "vgg19" and sidecar["ImageSize"] == 224
    assert sidecar["Layers"] == LAYERS
    assert sidecar["Alpha"] == saved["decoder"].alpha_
    assert sidecar["TrainingStimuli"] == saved["names"]
    assert sidecar["TrainingStimulusSHA256"][3] == file_sha256(saved["stimulus_files"]["n003"])
    assert sidecar["VoxelMask"]["SHA256"] == file_sha256(saved["mask_file"])
    assert sidecar["VoxelMask"]["Shape"] == list(MASK_SHAPE)
    assert sidecar["VoxelMask"]["Voxels"] == N_VOXELS
    assert sidecar["ArraysSHA256"] == file_sha256(arrays_path)
    assert sidecar["VoxelSelection"] == {"Method": "none"}


def test_loading_never_unpickles(saved, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("loading a decoder must not unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(np, "load", refuse)
    assert _load_checked(saved).alpha_ == saved["decoder"].alpha_


@pytest.mark.parametrize("overrides, exit_code, words", [
    ({"expected_encoder": "efficientnet-lite0"}, EXIT_BAD_ARGUMENTS, "encoder 'vgg19'"),
    ({"expected_weights_sha256": "cd" * 32}, EXIT_BAD_ARGUMENTS, "encoder weights"),
    ({"expected_image_size": 128}, EXIT_BAD_ARGUMENTS, "image size 224"),
])
def test_mismatching_encoder_or_image_size_is_refused(saved, overrides, exit_code, words):
    with pytest.raises(BidsReconError, match=words) as caught:
        _load_checked(saved, **overrides)
    assert caught.value.exit_code == exit_code


@pytest.mark.parametrize("mask_arguments, words", [
    ({"inside_positions": np.arange(1, N_VOXELS + 1)}, "different set of 30 voxels"),
    ({"inside_positions": np.arange(N_VOXELS), "shape": (4, 4, 4)}, "shape"),
    ({"inside_positions": np.arange(N_VOXELS), "affine": np.diag([3.0, 3.0, 3.0, 1.0])}, "affine"),
])
def test_mismatching_mask_is_refused(saved, mask_arguments, words):
    other_mask = _write_mask(saved["tmp_path"] / "other_mask.nii.gz", **mask_arguments)
    with pytest.raises(BidsReconError, match=words) as caught:
        _load_checked(saved, expected_mask_file=other_mask)
    assert caught.value.exit_code == EXIT_BAD_ARGUMENTS


def test_same_voxels_in_another_mask_file_are_accepted(saved):
    # Another data type and no compression: another file, the same voxels on the same grid.
    rewritten = _write_mask(saved["tmp_path"] / "rewritten_mask.nii", np.arange(N_VOXELS), dtype=np.float32)
    assert file_sha256(rewritten) != file_sha256(saved["mask_file"])
    assert _load_checked(saved, expected_mask_file=rewritten).alpha_ == saved["decoder"].alpha_


def test_missing_training_stimulus_is_refused(saved):
    stimulus_files = dict(saved["stimulus_files"])
    del stimulus_files["n004"]
    stimulus_files["n007"].unlink()
    with pytest.raises(BidsReconError, match="2 are missing: n004, n007") as caught:
        _load_checked(saved, stimulus_files=stimulus_files)
    assert caught.value.exit_code == EXIT_INPUT_MISSING


def test_changed_training_stimulus_is_refused(saved):
    saved["stimulus_files"]["n011"].write_bytes(b"another image")
    with pytest.raises(BidsReconError, match="1 training image files differ.*n011") as caught:
        _load_checked(saved)
    assert caught.value.exit_code == EXIT_BAD_ARGUMENTS


def test_replaced_arrays_file_is_refused(saved):
    other_stem = saved["tmp_path"] / "other"
    save_decoder(other_stem, _fitted_decoder(seed=1), layers=LAYERS, encoder_name="vgg19",
                 encoder_weights_sha256="ab" * 32, image_size=224, training_stimuli=saved["names"],
                 training_stimulus_hashes=["0" * 64] * N_IMAGES, voxel_mask_file=saved["mask_file"],
                 software_version="0.1.0")
    decoder_paths(saved["stem"])[0].write_bytes(decoder_paths(other_stem)[0].read_bytes())
    with pytest.raises(BidsReconError, match="changed or replaced") as caught:
        load_decoder(saved["stem"])
    assert caught.value.exit_code == EXIT_BAD_ARGUMENTS


@pytest.mark.parametrize("which", [0, 1])
def test_missing_decoder_file_is_refused(saved, which):
    decoder_paths(saved["stem"])[which].unlink()
    with pytest.raises(BidsReconError, match="not found") as caught:
        load_decoder(saved["stem"])
    assert caught.value.exit_code == EXIT_INPUT_MISSING


def test_newer_format_is_refused(saved):
    sidecar_path = decoder_paths(saved["stem"])[1]
    sidecar = json.loads(sidecar_path.read_text())
    sidecar["FormatVersion"] += 1
    sidecar_path.write_text(json.dumps(sidecar))
    with pytest.raises(BidsReconError, match="newer bidsrecon"):
        load_decoder(saved["stem"])


def test_voxel_selection_is_saved_with_the_decoder(tmp_path):
    mask_file = _write_mask(tmp_path / "mask.nii.gz", np.arange(40))
    decoder = _fitted_decoder(n_voxels=N_VOXELS)
    names = [f"n{index}" for index in range(N_IMAGES)]
    common = {"layers": ["fc"], "encoder_name": "vgg19", "encoder_weights_sha256": None, "image_size": 64,
              "training_stimuli": names, "training_stimulus_hashes": ["0" * 64] * N_IMAGES,
              "voxel_mask_file": mask_file, "software_version": "0.1.0"}
    with pytest.raises(ValueError, match="pass voxel_indices"):
        save_decoder(tmp_path / "all", decoder, **common)
    kept = np.arange(40)[::-1][:N_VOXELS]
    save_decoder(tmp_path / "some", decoder, voxel_indices=kept, **common)
    np.testing.assert_array_equal(load_voxel_indices(tmp_path / "some"), kept)
    loaded = load_decoder(tmp_path / "some", expected_mask_file=mask_file)
    assert list(loaded.alpha_) == ["fc"]


def test_decoded_features_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    # Layer order not alphabetical: the file keeps the order it was given.
    decoded = {"fc8": rng.standard_normal((3, 10)).astype(np.float32),
               "conv1": rng.standard_normal((3, 2, 4, 4)).astype(np.float32)}
    items = pd.DataFrame({"set": ["test", "test", "imagery"], "stimulus": ["n01", "n02", "é"],
                          "n_trials": [5, 5, 1]})
    path = save_decoded_features(tmp_path / "sub-01" / "sub-01_desc-decoded_features.h5", decoded, items,
                                 metadata={"Encoder": "vgg19", "ImageSize": 224})
    read, read_items, metadata = load_decoded_features(path)
    assert list(read) == ["fc8", "conv1"]
    for layer in decoded:
        np.testing.assert_array_equal(read[layer], decoded[layer])
    assert read_items["set"].tolist() == items["set"].tolist()
    assert read_items["stimulus"].tolist() == items["stimulus"].tolist()
    assert read_items["n_trials"].tolist() == [5, 5, 1]
    assert metadata == {"Encoder": "vgg19", "ImageSize": 224}
    only_conv, _, _ = load_decoded_features(path, layers=["conv1"])
    assert list(only_conv) == ["conv1"]
    with pytest.raises(BidsReconError, match="no layers"):
        load_decoded_features(path, layers=["fc7"])


def test_decoded_features_need_one_row_per_item(tmp_path):
    items = pd.DataFrame({"set": ["test"], "stimulus": ["n01"]})
    with pytest.raises(ValueError, match="one row per item"):
        save_decoded_features(tmp_path / "f.h5", {"fc": np.zeros((2, 3))}, items)
    with pytest.raises(ValueError, match="'/'"):
        save_decoded_features(tmp_path / "f.h5", {"a/b": np.zeros((1, 3))}, items)


def test_extra_fields_may_not_replace_own_fields(tmp_path):
    mask_file = _write_mask(tmp_path / "mask.nii.gz", np.arange(N_VOXELS))
    with pytest.raises(ValueError, match="ArraysSHA256"):
        save_decoder(tmp_path / "decoder", _fitted_decoder(), layers=["fc"], encoder_name="vgg19",
                     encoder_weights_sha256=None, image_size=64,
                     training_stimuli=[f"n{index}" for index in range(N_IMAGES)],
                     training_stimulus_hashes=["0" * 64] * N_IMAGES, voxel_mask_file=mask_file,
                     software_version="0.1.0", extra_fields={"ArraysSHA256": "0" * 64})
    assert not any(path.exists() for path in decoder_paths(tmp_path / "decoder"))


def test_alphas_per_test_trial_count_survive_saving(tmp_path):
    rng = np.random.default_rng(5)
    decoder = _fitted_decoder()
    X, image_index = decoder.X_ * decoder.voxel_std_ + decoder.voxel_mean_, decoder.image_index_
    features = {"conv": rng.standard_normal((N_IMAGES, 12)), "fc": rng.standard_normal((N_IMAGES, 5))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        decoder = KernelRidgeDecoder(alphas=np.logspace(-2, 2, 5), n_folds=4, random_state=3).fit(
            X, image_index, features, test_trials=[2, 2, 8])
    mask_file = _write_mask(tmp_path / "mask.nii.gz", np.arange(N_VOXELS))
    names = [f"n{index:03d}" for index in range(N_IMAGES)]
    stem = tmp_path / "decoder"
    save_decoder(stem, decoder, layers=LAYERS, encoder_name="vgg19", encoder_weights_sha256=None, image_size=224,
                 training_stimuli=names, training_stimulus_hashes=["0" * 64] * N_IMAGES, voxel_mask_file=mask_file,
                 software_version="0.1.0")
    sidecar = read_decoder_description(stem)
    assert sidecar["AlphaByTestTrials"] == {layer: {str(count): alpha for count, alpha in by_count.items()}
                                            for layer, by_count in decoder.alpha_by_trials_.items()}
    loaded = load_decoder(stem)
    assert loaded.alpha_by_trials_ == decoder.alpha_by_trials_ and loaded.trial_counts_ == (2, 8)
    X_test, trials = rng.standard_normal((3, N_VOXELS)), [8, 2, 5]
    for layer, coefficients in loaded.coefficients(X_test, trials).items():
        np.testing.assert_array_equal(coefficients, decoder.coefficients(X_test, trials)[layer])
