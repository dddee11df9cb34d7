"""--save-decoded-features bdpy: decoded features in the Kamitani lab's layout, read by bdpy itself."""
import json

import numpy as np
import pytest
import scipy.io
from bdpy.dataform import DecodedFeatures
from conftest import validate

from bidsrecon.cli import build_parser, main, parse_args
from bidsrecon.decoding.decoded_features import load_decoded_features
from bidsrecon.errors import EXIT_BAD_ARGUMENTS, BidsReconError
from bidsrecon.labformats.decoded_features import (
    check_bdpy_names,
    roi_label,
    write_decoded_feature_sets,
    write_decoded_features,
)
from bidsrecon.names import check_path_name
from bidsrecon.settings_file import config_file_argv, settings_toml

LAYERS = {"conv1_1": (3, 4, 4), "fc7": (16,), "fc8": (10,)}


def decoded_items(n_items, seed=0):
    rng = np.random.default_rng(seed)
    return {layer: rng.standard_normal((n_items, *shape)) for layer, shape in LAYERS.items()}


def test_bdpy_reads_every_layer_and_item_as_written(tmp_path):
    labels = ["n01443537_22563", "colorExpStim04_red_+", "letter_black_img011_A"]
    decoded = decoded_items(len(labels))
    written = write_decoded_features(tmp_path / "natural", decoded, labels, subject="sub-01", roi="VC")
    assert len(written) == len(LAYERS) * len(labels)
    assert tmp_path.joinpath("natural", "fc7", "sub-01", "VC", "n01443537_22563.mat").is_file()

    features = DecodedFeatures(str(tmp_path / "natural"))
    assert sorted(features.layers) == sorted(LAYERS)
    assert features.subjects == ["sub-01"] and features.rois == ["VC"] and sorted(features.labels) == sorted(labels)
    for layer, values in decoded.items():
        for index, label in enumerate(labels):
            item = features.get(layer=layer, subject="sub-01", roi="VC", label=label)
            assert item.dtype == np.float32 and item.shape == (1, *LAYERS[layer])
            assert np.array_equal(item[0], values[index].astype(np.float32))
    # The file itself: MATLAB v5, the one key bdpy looks up.
    contents = scipy.io.loadmat(str(tmp_path / "natural" / "fc8" / "sub-01" / "VC" / f"{labels[0]}.mat"))
    assert [key for key in contents if not key.startswith("__")] == ["feat"]


def test_one_root_per_test_set(tmp_path):
    # The same image seen and imagined: one stimulus name in two sets, which bdpy's layout cannot
    # tell apart within one root.
    sets = ["natural", "natural", "imagery", "imagery"]
    labels = ["n01443537_22563", "n01677366_18182", "n01443537_22563", "colorExpStim02_red_smallring"]
    decoded = decoded_items(len(labels), seed=1)
    written = write_decoded_feature_sets(tmp_path, decoded, sets, labels, subject="sub-01", roi="V1+V2+V3")
    assert list(written) == ["natural", "imagery"]
    for set_name in ("natural", "imagery"):
        features = DecodedFeatures(str(tmp_path / set_name))
        rows = [index for index, name in enumerate(sets) if name == set_name]
        assert sorted(features.labels) == sorted(labels[index] for index in rows)
        for layer, values in decoded.items():
            for index in rows:
                item = features.get(layer=layer, subject="sub-01", roi="V1+V2+V3", label=labels[index])
                assert np.array_equal(item[0], values[index].astype(np.float32))


@pytest.mark.parametrize("name", ["../evil", "a/b", "a\\b", "..", ".hidden", "a..b", "", 'say "cheese"', "tab\there"])
def test_a_stimulus_name_that_is_a_path_is_refused(tmp_path, name):
    with pytest.raises(BidsReconError, match="stimulus name") as error:
        write_decoded_features(tmp_path, {"fc8": np.zeros((1, 3))}, [name], subject="sub-01", roi="VC")
    assert error.value.exit_code == EXIT_BAD_ARGUMENTS and "rename the stimulus" in str(error.value)
    assert not any(tmp_path.iterdir())


def test_bad_set_and_layer_names_and_repeated_stimuli_are_refused(tmp_path):
    with pytest.raises(BidsReconError, match="test set name '../x'.*--spec"):
        write_decoded_feature_sets(tmp_path, {"fc8": np.zeros((1, 3))}, ["../x"], ["a"], subject="sub-01", roi="VC")
    with pytest.raises(BidsReconError, match="layer name 'a/b'"):
        write_decoded_features(tmp_path, {"a/b": np.zeros((1, 3))}, ["a"], subject="sub-01", roi="VC")
    with pytest.raises(BidsReconError, match=r"\['a'\] appear twice"):
        write_decoded_features(tmp_path, {"fc8": np.zeros((2, 3))}, ["a", "a"], subject="sub-01", roi="VC")
    with pytest.raises(BidsReconError, match="2 items but an array of shape"):
        write_decoded_features(tmp_path, {"fc8": np.zeros((3, 3))}, ["a", "b"], subject="sub-01", roi="VC")
    assert check_path_name("n01443537_22563.JPEG", "stimulus name", "") == "n01443537_22563.JPEG"


def test_roi_label():
    assert roi_label([]) == "brain"
    assert roi_label(["VC"]) == "VC"
    assert roi_label(["V1", "V2", "LH_hV4"]) == "V1+V2+LH_hV4"
    assert roi_label(["my roi/../x"]) == "myroix"


def parse(tmp_path, *options):
    (tmp_path / "bids").mkdir(exist_ok=True)
    return parse_args([str(tmp_path / "bids"), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                       *options])


def test_the_option_takes_an_optional_format(tmp_path):
    assert parse(tmp_path).save_decoded_features is None
    assert parse(tmp_path, "--save-decoded-features").save_decoded_features == "h5"
    assert parse(tmp_path, "--save-decoded-features", "h5").save_decoded_features == "h5"
    assert parse(tmp_path, "--save-decoded-features", "bdpy").save_decoded_features == "bdpy"
    assert parse(tmp_path, "--save-decoded-features=bdpy", "--seed", "1").save_decoded_features == "bdpy"
    with pytest.raises(SystemExit) as error:
        build_parser().parse_args([str(tmp_path), "out", "participant", "--save-decoded-features", "mat"])
    assert error.value.code == EXIT_BAD_ARGUMENTS


@pytest.mark.parametrize("value, expected", [("true", "h5"), ("false", None), ('"h5"', "h5"), ('"bdpy"', "bdpy")])
def test_the_config_file_takes_a_format_or_true(tmp_path, value, expected):
    # true is how settings files written before the option took a value spell it.
    path = tmp_path / "settings.toml"
    path.write_text(f"save-decoded-features = {value}\n")
    config = parse(tmp_path, "--config-file", str(path))
    assert config.save_decoded_features == expected
    if expected:  # and the settings a run records read back the same
        path.write_text(settings_toml(config))
        assert config_file_argv(["--config-file", str(path)]).count("--save-decoded-features") == 1
        assert parse(tmp_path, "--config-file", str(path)).save_decoded_features == expected


@pytest.mark.slow
def test_a_run_writes_what_bdpy_reads(tiny_dataset, tmp_path):
    """One run of the tiny dataset (about 20 s): bdpy's reader finds every test item of every set, equal to
    the h5 file of the same decoded features, and the output is still a valid BIDS derivative."""
    fast = ["--encoder", "efficientnet-lite0-random", "--image-size", "32", "--iterations", "2", "--nprocs", "1",
            "--skip-bids-validation", "--roi", "V1", "V2", "V3"]
    out, work = tmp_path / "out", tmp_path / "work"
    assert main([str(tiny_dataset), str(out), "participant", "-w", str(work), "--save-decoded-features", "bdpy",
                 *fast]) == 0
    decoder = out / "sub-01" / "decoder"
    assert not list(decoder.glob("*.h5"))
    sidecar = json.loads((decoder / "sub-01_decoder.json").read_text())
    assert sidecar["VoxelMask"]["Rois"] == ["V1", "V2", "V3"]
    layers = [layer for layer in sidecar["Layers"] if not layer.startswith("pixels")]  # the lab has no pixels
    # The same decoded features as the h5 format writes (the decode step is cached in the work dir).
    assert main([str(tiny_dataset), str(tmp_path / "h5"), "participant", "-w", str(work), "--save-decoded-features",
                 *fast]) == 0
    decoded, items, _ = load_decoded_features(tmp_path / "h5" / "sub-01" / "decoder" /
                                              "sub-01_desc-decoded_features.h5")
    assert sorted(path.name for path in (decoder / "bdpy").iterdir()) == sorted(set(items["set"]))
    for set_name in sorted(set(items["set"])):
        features = DecodedFeatures(str(decoder / "bdpy" / set_name))
        assert sorted(features.layers) == sorted(layers) and features.rois == ["V1+V2+V3"]
        rows = np.flatnonzero(items["set"] == set_name)
        assert sorted(features.labels) == sorted(items["stimulus"][rows])
        for layer in layers:
            for row in rows:
                item = features.get(layer=layer, subject="sub-01", roi="V1+V2+V3", label=items["stimulus"][row])
                assert np.array_equal(item[0], decoded[layer][row])
    code, report = validate(out)
    assert code == 0, report

    # The decoder applied to the same runs: the <roi> folder named from the saved decoder's sidecar.
    applied = tmp_path / "applied"
    assert main([str(tiny_dataset), str(applied), "participant", "-w", str(tmp_path / "work_applied"),
                 "--decoders-dir", str(out), "--save-decoded-features=bdpy", *fast[:-4]]) == 0
    natural = DecodedFeatures(str(applied / "sub-01" / "decoder" / "bdpy" / "natural"))
    assert natural.rois == ["V1+V2+V3"]
    rows = np.flatnonzero(items["set"] == "natural")
    np.testing.assert_allclose(natural.get(layer=layers[-1], subject="sub-01", roi="V1+V2+V3",
                                           label=items["stimulus"][rows[0]])[0],
                               decoded[layers[-1]][rows[0]], rtol=1e-5, atol=1e-6)


def test_names_are_checked_before_any_work():
    from types import SimpleNamespace

    import pandas as pd

    from bidsrecon.spec import TRAINING

    def run(set_name, *stimuli):
        return SimpleNamespace(set_name=set_name, trials=pd.DataFrame({"stimulus": stimuli}),
                               events=f"sub-01_task-{set_name}_events.tsv")

    def sets(*runs):
        return [(run.set_name, run.trials["stimulus"], run.events) for run in runs]

    check_bdpy_names(sets(run(TRAINING, ".training/only"), run("natural", "n01443537_22563")))  # training: no file
    with pytest.raises(BidsReconError, match=r"'\.\./x' contains a slash.*rename the stimulus in sub-01_task-imagery_events.tsv"):
        check_bdpy_names(sets(run("natural", "n01443537_22563"), run("imagery", "../x")))
