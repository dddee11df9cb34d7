"""``--features-dir``: the lab's precomputed features (bdpy's Features layout) as the decoder's training targets.

bdpy is the other side: its own writer (``save_feature``, MATLAB v7.3 through hdf5storage) makes the
folders, its own reader (``Features``) agrees with ours. Seconds in all.
"""
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.io
import torch
from bdpy.dataform import Features, save_feature
from PIL import Image

from bidsrecon.decoding.stage import fit_and_decode
from bidsrecon.decoding.stream import iter_feature_batches
from bidsrecon.encoders import get_encoder
from bidsrecon.errors import BidsReconError
from bidsrecon.features.files import FeatureFiles
from bidsrecon.images import load_images
from bidsrecon.labformats.features import (
    check_features,
    feature_file,
    feature_shape,
    list_labels,
    list_layers,
    read_feature,
)
from bidsrecon.names import check_path_name

torch.set_num_threads(1)
SIZE = 32
LAYERS = ["block4", "fc"]  # a convolutional layer (40, 4, 4) and a vector one (1000,)


# --- the format ---

def test_reader_returns_exactly_what_bdpy_wrote_and_reads(tmp_path):
    rng = np.random.default_rng(0)
    written = {("conv1_1", label): rng.standard_normal((1, 3, 4, 5)).astype(np.float32) for label in ("b", "a_1")}
    written |= {("fc6", label): rng.standard_normal((1, 7)).astype(np.float32) for label in ("b", "a_1")}
    for (layer, label), array in written.items():
        save_feature(array, str(tmp_path), layer, label)
    (tmp_path / "statistics.pkl").write_bytes(b"not a pickle: never read")

    assert list_layers(tmp_path) == ["conv1_1", "fc6"]
    assert list_labels(tmp_path, "conv1_1") == ["a_1", "b"]
    for (layer, label), array in written.items():
        ours = read_feature(tmp_path, layer, label)
        assert ours.dtype == np.float32 and ours.shape == array.shape
        np.testing.assert_array_equal(ours, array)
        assert feature_shape(feature_file(tmp_path, layer, label)) == array.shape
    (tmp_path / "statistics.pkl").unlink()  # bdpy's reader would unpickle it
    theirs = Features(str(tmp_path))
    assert theirs.layers == list_layers(tmp_path) and theirs.labels == list_labels(tmp_path, "fc6")
    np.testing.assert_array_equal(theirs.get("conv1_1", "b"), read_feature(tmp_path, "conv1_1", "b"))


def test_matlab_v5_files_are_read_too(tmp_path):
    array = np.random.default_rng(1).standard_normal((1, 2, 3, 4)).astype(np.float32)
    (tmp_path / "conv1_1").mkdir()
    scipy.io.savemat(tmp_path / "conv1_1" / "img.mat", {"feat": array})
    assert feature_shape(tmp_path / "conv1_1" / "img.mat") == (1, 2, 3, 4)
    np.testing.assert_array_equal(read_feature(tmp_path, "conv1_1", "img"), array)


@pytest.mark.parametrize("name", ["../x", "a/b", "a\\b", ".hidden", "..", ""])
def test_names_are_labels_never_paths(name):
    with pytest.raises(BidsReconError, match="file name"):
        check_path_name(name, "image name", "")


def test_a_file_without_feat_or_not_matlab_is_named(tmp_path):
    (tmp_path / "fc6").mkdir()
    scipy.io.savemat(tmp_path / "fc6" / "x.mat", {"other": np.zeros(3)})
    (tmp_path / "fc6" / "y.mat").write_bytes(b"not a MATLAB file at all")
    with pytest.raises(BidsReconError, match=r"x\.mat: holds no 'feat'"):
        read_feature(tmp_path, "fc6", "x")
    with pytest.raises(BidsReconError, match=r"y\.mat: cannot read it as a MATLAB file"):
        feature_shape(tmp_path / "fc6" / "y.mat")


def test_check_features_names_each_missing_layer_image_and_wrong_shape(tmp_path):
    for label in ("a", "b"):
        save_feature(np.zeros((1, 2, 3, 3), np.float32), str(tmp_path), "conv1_1", label)
    save_feature(np.zeros((1, 5), np.float32), str(tmp_path), "fc6", "a")  # b missing
    save_feature(np.zeros((1, 7), np.float32), str(tmp_path), "fc7", "a")
    save_feature(np.zeros((1, 6), np.float32), str(tmp_path), "fc7", "b")  # wrong shape
    shapes = {"conv1_1": (2, 3, 3), "fc6": (5,), "fc7": (7,), "fc8": (10,)}
    assert check_features(tmp_path, ["a", "b"], {"conv1_1": (2, 3, 3)}) == []
    problems = [str(problem) for problem in check_features(tmp_path, ["a", "b"], shapes, fix="pass --image-size 224")]
    assert len(problems) == 3, problems
    assert f"{tmp_path / 'fc6'}: no features of 1 of the 2 training images: b.mat" in problems[0]
    assert f"{tmp_path / 'fc7' / 'b.mat'} has shape (1, 6)" in problems[1]
    assert "needs (1, 7); pass --image-size 224" in problems[1]
    assert f"{tmp_path / 'fc8'}: no such folder" in problems[2] and "conv1_1, fc6, fc7" in problems[2]
    assert "no such folder" in str(check_features(tmp_path / "nothing", ["a"], shapes)[0])


# --- decoding on the files' numbers ---

class _NoTrainingForward:
    """The encoder, except that running it fails: nothing may be computed from the images."""

    def __init__(self, encoder):
        self._encoder = encoder

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def features(self, images, layers=None):
        raise AssertionError("the encoder ran on training images")

    def prepare(self, layers=None):
        raise AssertionError("the encoder ran on training images")


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """12 training images shown twice; 3 shown again as test items; voxels a noisy map of their pixels."""
    folder = tmp_path_factory.mktemp("stimuli")
    rng = np.random.default_rng(0)
    names = [f"n0000_{index:02d}" for index in range(12)]
    stimuli = {}
    for name in names:
        image = np.kron(rng.random((4, 4, 3)), np.ones((SIZE // 4, SIZE // 4, 1)))
        stimuli[name] = str(folder / f"{name}.png")
        Image.fromarray((image * 255).astype(np.uint8)).save(stimuli[name])
    stimuli = pd.Series(stimuli)
    images = load_images(list(stimuli), SIZE)
    mapping = rng.standard_normal((images[:, ::8, ::8].reshape(12, -1).shape[1], 30))
    rows = [("training", name) for name in names for _ in range(2)] + [("test", name) for name in names[:3]]
    trials = pd.DataFrame(rows, columns=["set", "stimulus"])
    index = {name: position for position, name in enumerate(names)}
    samples = np.stack([images[index[name], ::8, ::8].reshape(-1) @ mapping + 0.1 * rng.standard_normal(30)
                        for _, name in rows])
    encoder = get_encoder("efficientnet-lite0-random")
    mask = folder / "mask.nii.gz"  # 30 voxels, one per column of the samples
    nib.save(nib.Nifti1Image((np.arange(64) < 30).reshape(4, 4, 4).astype(np.uint8), np.eye(4)), mask)
    # The encoder's own features of the training images, as the passes compute them, in bdpy's layout.
    features_dir = tmp_path_factory.mktemp("features")
    train = load_images(list(stimuli), SIZE, dtype=np.uint8)
    for start, batch in iter_feature_batches(encoder, train, LAYERS):
        for layer in LAYERS:
            for offset, features in enumerate(batch[layer]):
                save_feature(features[np.newaxis], str(features_dir), layer, names[start + offset])
    return samples, trials, stimuli, encoder, features_dir, str(mask)


@pytest.mark.parametrize("method", ["kernel", "fastl2lir"])
def test_decoding_from_the_files_equals_decoding_from_the_encoder(problem, tmp_path, method):
    samples, trials, stimuli, encoder, features_dir, mask = problem
    options = dict(layers=LAYERS, image_size=SIZE, mask_file=mask, method=method, cv_units=100,
                   with_feature_std=method == "kernel")
    computed = fit_and_decode(samples, trials, stimuli, encoder, stem=str(tmp_path / "computed"), **options)
    read = fit_and_decode(samples, trials, stimuli, _NoTrainingForward(encoder), stem=str(tmp_path / "read"),
                          features_dir=features_dir, memory_budget=2 * 10**9, **options)
    assert set(read.decoded) == {*LAYERS, "pixels"}
    for layer in read.decoded:
        np.testing.assert_allclose(read.decoded[layer], computed.decoded[layer], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(read.train_mean[layer], computed.train_mean[layer], rtol=1e-5, atol=1e-6)
    assert str(features_dir) in Path(read.decoder_sidecar).read_text()


def test_the_decoder_is_trained_on_the_files_numbers_not_the_encoders(problem, tmp_path):
    samples, trials, stimuli, encoder, features_dir, mask = problem
    names = sorted(set(trials.loc[trials["set"] == "training", "stimulus"]))
    other = tmp_path / "other"
    rng = np.random.default_rng(5)
    written = {layer: [] for layer in LAYERS}
    for layer in LAYERS:
        for name in names:
            array = (2 * read_feature(features_dir, layer, name) + rng.standard_normal((1,))).astype(np.float32)
            save_feature(array, str(other), layer, name)
            written[layer].append(array[0])
    result = fit_and_decode(samples, trials, stimuli, _NoTrainingForward(encoder), layers=LAYERS, image_size=SIZE,
                            stem=str(tmp_path / "dec"), mask_file=mask, cv_units=100, features_dir=other)
    for layer in LAYERS:  # every training image has 2 trials: the mean is the plain mean of the files
        np.testing.assert_allclose(result.train_mean[layer], np.mean(written[layer], axis=0), rtol=1e-5, atol=1e-5)


def test_feature_files_refuse_a_file_unlike_the_others(tmp_path):
    save_feature(np.zeros((1, 4), np.float32), str(tmp_path), "fc", "a")
    save_feature(np.zeros((1, 5), np.float32), str(tmp_path), "fc", "b")
    save_feature(np.full((1, 4), np.nan, np.float32), str(tmp_path), "fc", "c")
    with pytest.raises(BidsReconError, match=r"b\.mat: its features have shape \(1, 5\)"):
        FeatureFiles(tmp_path, ["a", "b"]).batch(0, 2, ["fc"])
    with pytest.raises(BidsReconError, match=r"c\.mat: holds values that are not finite"):
        FeatureFiles(tmp_path, ["a", "c"]).batch(0, 2, ["fc"])


# --- the command line: checked before any work ---

FAST = ["--encoder", "efficientnet-lite0-random", "--image-size", "32", "--iterations", "3", "--nprocs", "1",
        "--skip-bids-validation"]


@pytest.fixture(scope="module")
def tiny_features(tiny_dataset, tmp_path_factory):
    """The random encoder's default layers of every stimulus of the tiny dataset, at 32 px, in bdpy's layout."""
    encoder = get_encoder("efficientnet-lite0-random")
    paths = sorted((tiny_dataset / "stimuli").glob("*.png"))
    folder = tmp_path_factory.mktemp("tiny_features")
    layers = list(encoder.default_layers)
    for start, batch in iter_feature_batches(encoder, load_images([str(p) for p in paths], SIZE), layers):
        for layer in layers:
            for offset, features in enumerate(batch[layer]):
                save_feature(features[np.newaxis], str(folder), layer, paths[start + offset].stem)
    return folder


def test_encoder_layer_shapes_are_those_of_its_features():
    encoder = get_encoder("efficientnet-lite0-random")
    assert encoder.layer_shapes(SIZE, ["stem", "fc"]) == {"stem": (32, 16, 16), "fc": (1000,)}


def test_features_dir_is_checked_at_planning(tiny_dataset, tiny_features, tmp_path, capsys):
    import shutil

    from bidsrecon.cli import main

    def run(*options, image_size="32"):
        arguments = [str(tiny_dataset), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                     "--dry-run", "--encoder", "efficientnet-lite0-random", "--image-size", image_size,
                     "--nprocs", "1", "--skip-bids-validation", *options]
        code = main(arguments)
        return code, capsys.readouterr().err

    assert run("--features-dir", str(tiny_features))[0] == 0
    # The wrong image size: the files are named with the shape the encoder needs, and the fix.
    code, error = run("--features-dir", str(tiny_features), image_size="64")
    assert code == 64 and "needs (1, 32, 32, 32)" in error and "--image-size 224" in error, error
    assert str(tiny_features / "stem") in error and "has shape (1, 32, 16, 16)" in error
    # A layer the folder lacks.
    code, error = run("--layers", "block4", "--features-dir", str(tiny_features))
    assert code == 66 and f"{tiny_features / 'block4'}: no such folder" in error, error
    # Training images the folder lacks.
    partial = tmp_path / "partial"
    shutil.copytree(tiny_features, partial)
    for path in (partial / "block2").glob("n0*.mat"):
        path.unlink()
    code, error = run("--features-dir", str(partial))
    assert code == 66 and f"{partial / 'block2'}: no features of " in error and ".mat" in error, error
    assert not (tmp_path / "out").exists()


def test_features_dir_is_refused_with_decoders_dir_or_when_absent(tmp_path):
    from bidsrecon.cli import parse_args

    common = [str(tmp_path / "bids"), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work")]
    features = tmp_path / "features"
    features.mkdir()
    with pytest.raises(BidsReconError, match="--decoders-dir"):
        parse_args([*common, "--features-dir", str(features), "--decoders-dir", str(features)])
    with pytest.raises(BidsReconError, match="no such folder"):
        parse_args([*common, "--features-dir", str(tmp_path / "nowhere")])
    assert parse_args([*common, "--features-dir", str(features)]).features_dir == features.resolve()
    with pytest.raises(BidsReconError, match="inside --features-dir"):  # an input: never written into
        parse_args([str(tmp_path / "bids"), str(features / "out"), "participant", "--features-dir", str(features)])


def test_a_saved_decoder_trained_on_files_is_not_applied(tmp_path):
    from bidsrecon.decoding.saved import SavedDecoder, check_saved_decoder

    saved = SavedDecoder(str(tmp_path / "sub-01_decoder"), "mask.nii.gz", None,
                         {"TrainingFeatures": "/data/features", "Encoder": "vgg19-caffe", "ImageSize": 224})
    with pytest.raises(BidsReconError, match="trained on precomputed features read from /data/features"):
        check_saved_decoder(saved, encoder="vgg19-caffe", encoder_weights_sha256=None, image_size=224, layers=(),
                            bold_files=[], raw_input=False, stimulus_files={})
