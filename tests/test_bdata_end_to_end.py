"""--bdata-dir end to end: a simulated participant's own samples, written as the lab's BData files by
bdpy's API, go through the app and give the decoded features that the app's own preprocessing gave."""
import json
import sys
from pathlib import Path

import bdpy
import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import validate

from bidsrecon.cli import main
from bidsrecon.errors import EXIT_NOTHING_SELECTED

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from decoder_agreement import decode_node_inputs  # noqa: E402

FAST = ["--encoder", "efficientnet-lite0-random", "--image-size", "32", "--iterations", "10", "--nprocs", "1",
        "--save-decoded-features"]
#: The lab's file names per set (figshare's "Deep Image Reconstruction" release).
SESSIONS = {"training": "perceptionNaturalImageTraining", "natural": "perceptionNaturalImageTest",
            "shapes": "perceptionArtificialImage", "letters": "perceptionLetterImage", "imagery": "imagery"}


def write_participant_bdata(folder, samples, trials, mask_file, rng):
    """One BData file per set, as the lab makes them: samples with the voxels' positions (mm) in a
    shuffled column order, Run, and stimulus_name through a value map."""
    mask = nib.load(mask_file)
    positions = nib.affines.apply_affine(mask.affine, np.argwhere(np.asarray(mask.dataobj) > 0))
    shuffle = rng.permutation(samples.shape[1])
    names = {name: float(index + 1) for index, name in enumerate(sorted(set(trials["stimulus"])))}
    for set_name, rows in trials.groupby("set", sort=False):
        data = bdpy.BData()
        data.add(samples[rows.index.to_numpy()][:, shuffle].astype(np.float64), "VoxelData")
        data.add(rows["run"].to_numpy(dtype=float)[:, None], "Run")
        data.add(rows["stimulus"].map(names).to_numpy()[:, None], "stimulus_name")
        data.add_metadata("ROI_VC", np.ones(samples.shape[1]), where="VoxelData")
        for axis, key in enumerate(("voxel_x", "voxel_y", "voxel_z")):
            data.add_metadata(key, positions[shuffle, axis], where="VoxelData")
        data.add_vmap("stimulus_name", {number: name for name, number in names.items()
                                        if name in set(rows["stimulus"])})
        data.save(str(folder / f"sub-01_{SESSIONS[set_name]}_original_VC.h5"))


def decoded(out):
    with h5py.File(out / "sub-01" / "decoder" / "sub-01_desc-decoded_features.h5", "r") as store:
        return {layer: store[f"features/{layer}"][()] for layer in store["features"]}


@pytest.mark.slow
def test_bdata_input_gives_the_decoded_features_of_our_preprocessing(tiny_dataset, tmp_path):
    ours, work = tmp_path / "ours", tmp_path / "work"
    assert main([str(tiny_dataset), str(ours), "participant", "-w", str(work), *FAST]) == 0
    inputs = decode_node_inputs(work)
    samples = np.concatenate([np.load(path) for path in inputs["samples_files"]])
    tables = [pd.read_csv(path, sep="\t").assign(run=index + 1) for index, path in enumerate(inputs["trials_files"])]
    trials = pd.concat(tables, ignore_index=True)
    bdata = tmp_path / "bdata"
    bdata.mkdir()
    write_participant_bdata(bdata, samples, trials, inputs["mask_file"][0], np.random.default_rng(0))

    theirs = tmp_path / "theirs"
    assert main([str(tiny_dataset), str(theirs), "participant", "-w", str(tmp_path / "work2"),
                 "--bdata-dir", str(bdata), *FAST]) == 0
    # The same samples and trials give the same decoder and decoded features, bit for bit.
    first, second = decoded(ours), decoded(theirs)
    assert list(first) == list(second)
    for layer in first:
        np.testing.assert_array_equal(first[layer], second[layer], err_msg=layer)
    items = pd.read_csv(theirs / "sub-01" / "sub-01_desc-items_metrics.tsv", sep="\t")
    assert set(items["set"]) == set(trials["set"]) - {"training"}
    # Where the samples came from is recorded: the BData folder is a source dataset, each item names its rows.
    description = json.loads((theirs / "dataset_description.json").read_text())
    assert description["DatasetLinks"]["bdata"] == bdata.resolve().as_uri()
    sidecar = json.loads(next((theirs / "sub-01" / "recon").glob("*_recon.json")).read_text())
    assert all(sample["Source"].startswith("bids:bdata:sub-01_") for sample in sidecar["SourceSamples"])
    assert not (theirs / "sub-01" / "qc").exists()  # no run was read: no motion, no tSNR
    # The report's runs table names the lab's files' sessions and their runs.
    assert "perceptionLetterImage" in (theirs / "sub-01.html").read_text()
    citation = (theirs / "logs" / "CITATION.md").read_text()
    assert "preprocessed BData files" in citation and "realigned" not in citation
    mask = theirs / "sub-01" / "func" / "sub-01_task-perception_space-bdata_desc-decoder_mask.nii.gz"
    assert int(np.asarray(nib.load(mask).dataobj).sum()) == samples.shape[1]
    code, report = validate(theirs)
    assert code == 0, report
    # The settings the run records run it again (as --config-file).
    settings = theirs / "sub-01" / "log" / "sub-01_desc-settings_log.toml"
    assert main([str(tiny_dataset), str(tmp_path / "again"), "participant", "-w", str(tmp_path / "work2"),
                 "--config-file", str(settings), "--dry-run"]) == 0


def test_bdata_dir_refuses_run_options(tiny_dataset, tmp_path, capsys):
    bdata = tmp_path / "bdata"
    bdata.mkdir()
    code = main([str(tiny_dataset), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                 "--bdata-dir", str(bdata), "--roi", "V1"])
    assert code == 64
    assert "drop --roi" in capsys.readouterr().err
    code = main([str(tiny_dataset), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                 "--bdata-dir", str(bdata)])
    assert code == EXIT_NOTHING_SELECTED and "no BData file" in capsys.readouterr().err
