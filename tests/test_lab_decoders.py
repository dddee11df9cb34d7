"""--bdata-dir with --decoders-dir TREE: the Kamitani lab's own trained decoders (the brain-decoding
cookbook's tree, trained here with bdpy's ModelTraining and FastL2LiR as the cookbook's training script
does) applied to the lab's BData samples give what the lab's own prediction (bdpy's ModelTest) gives."""
import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import validate

from bidsrecon.cli import main
from bidsrecon.decoding.stream import iter_feature_batches
from bidsrecon.encoders import get_encoder
from bidsrecon.images import load_images

bdpy = pytest.importorskip("bdpy")
bdpy_dataform = pytest.importorskip("bdpy.dataform")
bdpy_ml = pytest.importorskip("bdpy.ml")
fastl2lir = pytest.importorskip("fastl2lir")

ENCODER, IMAGE_SIZE, LAYERS = "efficientnet-lite0-random", 32, ("block2", "block6")
FAST = ["--encoder", ENCODER, "--image-size", str(IMAGE_SIZE), "--iterations", "5", "--nprocs", "1"]
#: The lab's file names per set (figshare's "Deep Image Reconstruction" release) and their sessions here.
SESSIONS = {"training": "perceptionNaturalImageTraining", "natural": "perceptionNaturalImageTest",
            "shapes": "perceptionArtificialImage", "letters": "perceptionLetterImage"}
N_VOXELS = 40
NORM_KEYS = ("x_mean", "x_norm", "y_mean", "y_norm")


def _blocks(bids, session):
    """The stimulus blocks of a session's runs: their labels and runs, as the lab's files hold one sample each."""
    rows = []
    for run, events in enumerate(sorted(Path(bids).glob(f"sub-01/ses-{session}*/func/*_events.tsv")), start=1):
        table = pd.read_csv(events, sep="\t", dtype=str, keep_default_na=False)
        names = table.loc[table["stimulus_name"] != "n/a", "stimulus_name"]
        rows += [(name, run) for name in names]
    return pd.DataFrame(rows, columns=["stimulus", "run"])


def _write_bdata(folder, bids, rng):
    """One BData file per set; the ROI's columns in a shuffled order of their voxel_x/y/z. Returns the
    files and the samples of the training file."""
    grid = np.stack(np.unravel_index(np.arange(60), (5, 4, 3)), axis=1)[rng.permutation(60)[:N_VOXELS]]
    positions = grid * 2.0 + [-40, -90, 10]
    pattern = rng.standard_normal((N_VOXELS, 8))
    names = sorted({name for session in SESSIONS.values() for name in _blocks(bids, session)["stimulus"]})
    numbers = {name: float(index + 1) for index, name in enumerate(names)}
    files = {}
    for set_name, session in SESSIONS.items():
        blocks = _blocks(bids, session)
        # Each image drives the voxels alike in every block (plus noise), so the decoders are not noise alone.
        codes = np.stack([np.random.default_rng(int(numbers[name])).standard_normal(8) for name in blocks["stimulus"]])
        samples = codes @ pattern.T + 0.5 * rng.standard_normal((len(blocks), N_VOXELS))
        data = bdpy.BData()
        data.add(samples, "VoxelData")
        data.add(blocks["run"].to_numpy(dtype=float)[:, None], "Run")
        data.add(blocks["stimulus"].map(numbers).to_numpy()[:, None], "stimulus_name")
        data.add_metadata("ROI_VC", np.ones(N_VOXELS), where="VoxelData")
        for axis, key in enumerate(("voxel_x", "voxel_y", "voxel_z")):
            data.add_metadata(key, positions[:, axis], where="VoxelData")
        data.add_vmap("stimulus_name", {number: name for name, number in numbers.items()
                                        if name in set(blocks["stimulus"])})
        files[set_name] = folder / f"sub-01_{session}_original_VC.h5"
        data.save(str(files[set_name]))
    return files


def _train_like_the_cookbook(tree, training_file, bids, layers=LAYERS, subject="sub-01", roi="VC"):
    """featdec_fastl2lir_train.py's steps for each layer: the ROI's samples and labels from the BData
    file, the training images' features (the encoder's), normalisation saved with save_array, then
    ModelTraining of FastL2LiR in the 'bdmodel' format, chunked along axis 1 (the cookbook's default)."""
    data = bdpy.BData(str(training_file))
    x, x_labels = data.select("ROI_VC"), list(data.get_labels("stimulus_name"))
    y_labels = sorted(set(x_labels))
    images = load_images([Path(bids) / "stimuli" / f"{name}.png" for name in y_labels], IMAGE_SIZE)
    encoder = get_encoder(ENCODER, seed=0)
    batches = [features for _, features in iter_feature_batches(encoder, images, list(layers))]
    y_index = np.array([y_labels.index(label) for label in x_labels])
    for layer in layers:
        y = np.concatenate([batch[layer] for batch in batches]).astype(np.float64)
        folder = tree / layer / subject / roi / "model"
        folder.mkdir(parents=True)
        norm = {"x_mean": x.mean(axis=0)[np.newaxis], "x_norm": x.std(axis=0, ddof=1)[np.newaxis],
                "y_mean": y.mean(axis=0)[np.newaxis], "y_norm": y.std(axis=0, ddof=1)[np.newaxis]}
        for key in NORM_KEYS:
            bdpy_dataform.save_array(str(folder / f"{key}.mat"), norm[key], key=key, dtype=np.float32, sparse=False)
        # Every voxel per unit: fastl2lir 0.11's voxel selection fails under numpy 2.
        training = bdpy_ml.ModelTraining(
            fastl2lir.FastL2LiR(), x, y, X_normalize={"mean": norm["x_mean"], "std": norm["x_norm"]},
            Y_normalize={"mean": norm["y_mean"], "std": norm["y_norm"]}, Y_sort={"index": y_index},
            model_parameters={"alpha": 100.0, "n_feat": x.shape[1], "dtype": np.float32}, dtype=np.float32,
            chunk_axis=1, save_format="bdmodel", save_path=str(folder), verbose=0)
        training.run()


def _predict_like_the_cookbook(tree, test_file, layer):
    """featdec_fastl2lir_predict.py's steps: each label's samples averaged, normalised, ModelTest with
    'bdmodel', de-normalised. Returns {label: features}."""
    data = bdpy.BData(str(test_file))
    x, labels = data.select("ROI_VC"), np.array(data.get_labels("stimulus_name"))
    unique = list(np.unique(labels))
    x = np.vstack([x[labels == label].mean(axis=0) for label in unique])
    folder = tree / layer / "sub-01" / "VC" / "model"
    norm = {key: bdpy_dataform.load_array(str(folder / f"{key}.mat"), key=key) for key in NORM_KEYS}
    test = bdpy_ml.ModelTest(fastl2lir.FastL2LiR(), (x - norm["x_mean"]) / norm["x_norm"], model_format="bdmodel",
                             model_path=str(folder), dtype=np.float32, chunk_axis=1, verbose=0)
    predicted = test.run() * norm["y_norm"] + norm["y_mean"]
    return dict(zip(unique, predicted))


@pytest.fixture(scope="module")
def lab_files(tiny_dataset, tmp_path_factory):
    """The participant's BData files and the lab's decoders trained on them (a cookbook tree)."""
    root = tmp_path_factory.mktemp("lab")
    (root / "bdata").mkdir()
    files = _write_bdata(root / "bdata", tiny_dataset, np.random.default_rng(0))
    _train_like_the_cookbook(root / "tree", files["training"], tiny_dataset)
    return root / "bdata", root / "tree", files


@pytest.mark.slow
def test_lab_decoders_give_the_lab_prediction(tiny_dataset, lab_files, tmp_path):
    bdata, tree, files = lab_files
    out = tmp_path / "out"
    assert main([str(tiny_dataset), str(out), "participant", "-w", str(tmp_path / "work"), "--bdata-dir", str(bdata),
                 "--decoders-dir", str(tree), "--save-decoded-features", *FAST]) == 0
    with h5py.File(out / "sub-01" / "decoder" / "sub-01_desc-decoded_features.h5", "r") as store:
        decoded = {layer: store[f"features/{layer}"][()] for layer in store["features"]}
        items = pd.DataFrame({column: [v.decode() if isinstance(v, bytes) else v for v in store[f"items/{column}"][()]]
                              for column in ("set", "stimulus")})
    assert sorted(decoded) == sorted(LAYERS)  # the lab's decoders have no pixels pseudo-layer
    for set_name in ("natural", "shapes", "letters"):
        rows = items[items["set"] == set_name]
        assert len(rows)
        for layer in LAYERS:
            expected = _predict_like_the_cookbook(tree, files[set_name], layer)
            assert sorted(expected) == sorted(rows["stimulus"])
            ours = decoded[layer][rows.index.to_numpy()]
            theirs = np.stack([expected[name] for name in rows["stimulus"]])
            np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max(),
                                       err_msg=f"{set_name} {layer}")
    # What was applied is recorded: the recon sidecars and decoder/ name the lab's tree.
    sidecar = json.loads(next((out / "sub-01" / "recon").glob("*_recon.json")).read_text())
    assert sidecar["Decoder"]["FittedInThisRun"] is False
    assert sidecar["Decoder"]["KamitaniLabDecoders"] == str(tree.resolve())
    assert sidecar["Layers"] == list(LAYERS)
    decoder = json.loads((out / "sub-01" / "decoder" / "sub-01_decoder.json").read_text())
    assert decoder["Tree"] == str(tree.resolve()) and "Kamitani lab" in decoder["Description"]
    listing = pd.read_csv(out / "sub-01" / "decoder" / decoder["Files"], sep="\t")
    assert listing["file"].str.startswith("block2/sub-01/VC/model/W/").any()
    assert json.loads((out / "dataset_description.json").read_text())["DatasetLinks"]["decoders"] == tree.resolve().as_uri()
    assert "Kamitani lab's trained FastL2LiR decoders" in (out / "logs" / "CITATION.md").read_text()
    code, report = validate(out)
    assert code == 0, report


def _run(tiny_dataset, tmp_path, bdata, tree, *extra):
    return main([str(tiny_dataset), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                 "--bdata-dir", str(bdata), "--decoders-dir", str(tree), "--dry-run", *FAST, *extra])


def test_a_missing_layer_folder_is_named(tiny_dataset, lab_files, tmp_path, capsys):
    bdata, tree, _ = lab_files
    assert _run(tiny_dataset, tmp_path, bdata, tree, "--layers", "block2", "block3") == 66
    error = capsys.readouterr().err
    assert "block3" in error and "its layer folders are: block2, block6" in error
    assert _run(tiny_dataset, tmp_path, bdata, tree, "--layers", "block6") == 0  # a layer it has
    assert "apply the Kamitani lab's decoders" in capsys.readouterr().out


def test_another_roi_or_participant_is_refused(tiny_dataset, lab_files, tmp_path, capsys):
    bdata, _, files = lab_files
    tree = tmp_path / "tree"
    # Trained on 5 voxels fewer: another ROI's decoder.
    data = bdpy.BData(str(files["training"]))
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    data.add_metadata("ROI_VC", np.r_[np.ones(N_VOXELS - 5), np.zeros(5)], where="VoxelData")
    data.save(str(fewer / files["training"].name))
    _train_like_the_cookbook(tree, fewer / files["training"].name, tiny_dataset, layers=("block6",))
    assert _run(tiny_dataset, tmp_path, bdata, tree) == 64
    error = capsys.readouterr().err
    assert f"{tree / 'block6' / 'sub-01' / 'VC' / 'model' / 'x_mean.mat'}: the decoder takes {N_VOXELS - 5} voxels" in error
    assert f"holds {N_VOXELS}" in error


def test_another_unit_shape_is_refused(tiny_dataset, lab_files, tmp_path, capsys):
    bdata, tree, _ = lab_files
    assert _run(tiny_dataset, tmp_path, bdata, tree, "--image-size", "64") == 64
    error = capsys.readouterr().err
    assert "block2 has shape [24, 8, 8] in the tree, [24, 16, 16] in the encoder" in error
    assert "block6" in error and "--encoder vgg19-caffe --image-size 224" in error


def test_feature_std_corrections_are_refused(tiny_dataset, lab_files, tmp_path, capsys):
    bdata, tree, _ = lab_files
    assert _run(tiny_dataset, tmp_path, bdata, tree, "--feature-correction", "lab2019") == 64
    assert "y_mean and y_norm" in capsys.readouterr().err


def test_a_missing_subject_folder_lists_what_is_there(tiny_dataset, lab_files, tmp_path, capsys):
    bdata, tree, _ = lab_files
    other = tmp_path / "other"
    for layer in LAYERS:
        (other / layer / "sub-02" / "VC" / "model").mkdir(parents=True)
    assert _run(tiny_dataset, tmp_path, bdata, other) == 66
    error = capsys.readouterr().err
    assert f"{other / 'block2' / 'sub-01'} not found (its folder holds: sub-02)" in error


def test_a_bare_subject_label_folder_is_taken(tiny_dataset, lab_files, tmp_path, capsys):
    """Configurations that key the subject as 01 give <layer>/01/<roi>/model/."""
    bdata, tree, _ = lab_files
    bare = tmp_path / "bare"
    for layer in LAYERS:
        (bare / layer / "01").mkdir(parents=True)
        (bare / layer / "01" / "VC").symlink_to(tree / layer / "sub-01" / "VC")
    assert _run(tiny_dataset, tmp_path, bdata, bare) == 0
    description = json.loads((tmp_path / "work" / "sub-01" / "bdata" / "sub-01_desc-lab_decoders.json").read_text())
    assert description["Subject"] == "01" and list(description["Layers"]) == list(LAYERS)
    assert sorted(description["VoxelIndices"]) == list(range(N_VOXELS))
