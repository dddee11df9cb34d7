"""participant then group on the tiny simulated dataset, and the outputs checked from outside."""
import json
import os
from pathlib import Path

import pandas as pd
import pytest
from conftest import validate
from PIL import Image

from bidsrecon.bids.derivatives import entity_label
from bidsrecon.cli import main


def snapshot(folder):
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.slow
def test_participant_then_group(tiny_dataset, tmp_path, capsys):
    before = snapshot(tiny_dataset)
    out, work = tmp_path / "bidsrecon", tmp_path / "work"
    common = ["-w", str(work), "--encoder", "efficientnet-lite0-random", "--image-size", "32", "--iterations", "20",
              "--nprocs", "1"]
    assert main([str(tiny_dataset), str(out), "participant", "--participant-label", "01", *common]) == 0
    assert main([str(tiny_dataset), str(out), "group", *common]) == 0
    printed = capsys.readouterr().out
    assert "pairwise identification" in printed and "figure:" in printed

    # The input is never written to.
    assert snapshot(tiny_dataset) == before

    # A valid derivative dataset.
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "bidsrecon"
    code, report = validate(out)
    assert code == 0, report

    # One reconstruction (PNG + sidecar) and one stimulus image per test item, for every test set.
    metrics = pd.read_csv(out / "sub-01" / "sub-01_desc-sets_metrics.tsv", sep="\t")
    items = pd.read_csv(out / "sub-01" / "sub-01_desc-items_metrics.tsv", sep="\t")
    assert set(metrics["set"]) == {"natural", "shapes", "letters", "imagery"}
    assert metrics["identification_pixel"].between(0, 1).all()
    recons = sorted((out / "sub-01" / "recon").glob("*_recon.png"))
    assert len(recons) == len(items) == metrics["n_items"].sum()
    assert Image.open(recons[0]).size == (32, 32)
    sidecar = json.loads(recons[0].with_suffix(".json").read_text())
    assert sidecar["Iterations"] == 20 and sidecar["Seed"] == 0 and sidecar["Layers"]
    assert all(trial["Source"].startswith("bids:raw:sub-01/") for trial in sidecar["SourceTrials"])
    # The run's settings, as a --config-file that repeats it.
    import tomllib

    settings = tomllib.loads((out / "sub-01" / "log" / "sub-01_desc-settings_log.toml").read_text())
    assert settings["iterations"] == 20 and settings["encoder"] == "efficientnet-lite0-random"
    assert settings["participant-label"] == ["01"] and settings["normalise"] == "rest"

    # A random-weight encoder is named as such in every output.
    assert "random weights" in sidecar["EncoderDescription"]
    assert metrics["encoder"].str.contains("random").all()
    decoder = json.loads((out / "sub-01" / "decoder" / "sub-01_decoder.json").read_text())
    assert "random weights" in decoder["EncoderDescription"]

    # The decoder is saved whole (arrays next to its sidecar) and reloads without the work dir.
    from bidsrecon.decoding.artifact import load_decoder

    assert (out / "sub-01" / "decoder" / decoder["ArraysFile"]).is_file()
    # Its voxel mask travels with it, and is the one it was trained in.
    mask = out / "sub-01" / "decoder" / decoder["VoxelMask"]["File"]
    assert mask.name == "sub-01_desc-voxelmask_decoder.nii.gz"
    reloaded = load_decoder(out / "sub-01" / "decoder" / "sub-01_decoder", expected_encoder="efficientnet-lite0-random",
                            expected_mask_file=mask)
    assert set(reloaded.alpha_) == set(decoder["Layers"])
    accuracy = pd.read_csv(out / "sub-01" / "sub-01_desc-decoding_metrics.tsv", sep="\t")
    # The decoder saves the pixels pseudo-layer as its two parts; accuracy is scored on the image.
    assert {"pixels_luminance", "pixels_colour"} <= set(decoder["Layers"])
    assert set(accuracy["layer"]) == set(decoder["Layers"]) - {"pixels_luminance", "pixels_colour"} | {"pixels"}
    assert len(accuracy) == len(metrics) * (len(decoder["Layers"]) - 1)

    # Group level: one table of every participant's scores, one figure per participant.
    group = pd.read_csv(out / "group" / "group_desc-sets_metrics.tsv", sep="\t")
    own = group[group["statistic"] == "value"]
    assert list(own["participant_id"].unique()) == ["sub-01"] and set(own["set"]) == set(metrics["set"])
    assert (out / "group" / "group.html").is_file()
    figure = Image.open(out / "figures" / "sub-01_desc-reconstructions_figure.png")
    assert figure.width > 32 * 4

    # A second run of the same command reuses the work directory and rewrites the outputs.
    os.remove(recons[0])
    assert main([str(tiny_dataset), str(out), "participant", *common]) == 0
    assert recons[0].is_file()


@pytest.mark.slow
def test_default_encoder_is_the_packaged_imagenet_network(tiny_dataset, tmp_path):
    out = tmp_path / "bidsrecon"
    assert main([str(tiny_dataset), str(out), "participant", "-w", str(tmp_path / "work"), "--image-size", "32",
                 "--iterations", "5", "--skip-bids-validation"]) == 0
    decoder = json.loads((out / "sub-01" / "decoder" / "sub-01_decoder.json").read_text())
    assert decoder["Encoder"] == "efficientnet-lite0"
    assert "ImageNet weights" in decoder["EncoderDescription"] and "random" not in decoder["EncoderDescription"]
    assert len(decoder["EncoderWeightsSHA256"]) == 64


@pytest.mark.slow
def test_demo_reaches_the_promised_accuracy(tmp_path):
    """The README's promise for `make demo`: natural >= 75%, shapes >= 80% (chance 50%)."""
    from bidsrecon.demo import main as demo_main

    assert demo_main([str(tmp_path / "demo")]) == 0
    metrics = pd.read_csv(tmp_path / "demo" / "bidsrecon" / "sub-01" / "sub-01_desc-sets_metrics.tsv", sep="\t")
    accuracy = metrics.set_index("set")["identification_pixel"]
    assert accuracy["natural"] >= 0.75 and accuracy["shapes"] >= 0.80, accuracy.to_dict()
    code, report = validate(tmp_path / "demo" / "bidsrecon")
    assert code == 0, report


FAST = ["--encoder", "efficientnet-lite0-random", "--image-size", "32", "--iterations", "10", "--nprocs", "1",
        "--skip-bids-validation"]


@pytest.mark.slow
def test_fmriprep_input_with_confounds(tiny_fmriprep_dataset, tmp_path):
    out = tmp_path / "bidsrecon"
    fmriprep = tiny_fmriprep_dataset / "derivatives" / "fmriprep"
    assert main([str(tiny_fmriprep_dataset), str(out), "participant", "-w", str(tmp_path / "work"),
                 "--derivatives", f"fmriprep={fmriprep}", "--confounds", "trans_*", "rot_*", "cosine*", *FAST]) == 0
    sidecar = json.loads(next((out / "sub-01" / "recon").glob("*_recon.json")).read_text())
    assert sidecar["SourceTrials"]
    # The samples node regressed the fMRIPrep confounds named on the command line.
    work_inputs = list((tmp_path / "work").rglob("_report/report.rst"))
    assert any("cosine00" in path.read_text() for path in work_inputs if "run_samples" in str(path))
    code, report = validate(out)
    assert code == 0, report
    check_pybids_queries(tiny_fmriprep_dataset, fmriprep, out)


def check_pybids_queries(bids_dir, fmriprep, out):
    """The outputs as pybids sees them next to the raw data: every reconstruction, its sidecar and the
    voxel mask in fMRIPrep's space can be queried by entities BIDS has."""
    from bids import BIDSLayout

    layout = BIDSLayout(bids_dir, derivatives=[out], validate=False)
    items = pd.read_csv(out / "sub-01" / "sub-01_desc-items_metrics.tsv", sep="\t")
    recons = layout.get(scope="bidsrecon", subject="01", suffix="recon", extension=".png")
    assert len(recons) == len(items) > 1
    for row in items.itertuples():  # one file per item, with its own sidecar's metadata (not a neighbour's)
        label = entity_label(row.stimulus)
        found = layout.get(scope="bidsrecon", subject="01", acquisition=row.set, desc=label, suffix="recon",
                           extension=".png")
        assert len(found) == 1, (row.set, row.stimulus, found)
        metadata = found[0].get_metadata()
        assert (metadata["Stimulus"], metadata["TestSet"]) == (row.stimulus, row.set)
        assert all(source.startswith("bids:fmriprep:sub-01/") for source in metadata["Sources"])
        assert len(layout.get(scope="bidsrecon", subject="01", acquisition=row.set, desc=label,
                              suffix="stimulus", extension=".png")) == 1
    mask = layout.get(scope="bidsrecon", subject="01", space="T1w", desc="decoder", suffix="mask",
                      extension=".nii.gz")
    assert [Path(m.path).parent.name for m in mask] == ["func"]
    assert mask[0].get_metadata()["SpatialReference"].startswith("bids:fmriprep:sub-01/")
    for name in ("sets_metrics", "items_metrics", "decoding_metrics"):
        assert len(layout.get(scope="bidsrecon", subject="01", desc=name.split("_")[0], suffix="metrics",
                              extension=".tsv")) == 1
    # Every file of the participant has a suffix (the last part of its name is not an entity).
    for path in (out / "sub-01").rglob("*"):
        if path.is_file():
            assert "-" not in path.name.split(".")[0].rsplit("_", 1)[-1], path
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetLinks"]["fmriprep"] == fmriprep.resolve().as_uri()
    assert {"URL": fmriprep.resolve().as_uri()} in description["SourceDatasets"]


@pytest.mark.slow
def test_roi_and_voxel_selection(tiny_dataset, tmp_path):
    out = tmp_path / "roi"
    assert main([str(tiny_dataset), str(out), "participant", "-w", str(tmp_path / "work"), "--roi", "V1", "V2", "V3",
                 *FAST]) == 0
    decoder = json.loads((out / "sub-01" / "decoder" / "sub-01_decoder.json").read_text())
    roi_voxels = decoder["Voxels"]
    out2 = tmp_path / "selected"
    assert main([str(tiny_dataset), str(out2), "participant", "-w", str(tmp_path / "work2"), "--n-voxels", "50",
                 *FAST]) == 0
    selected = json.loads((out2 / "sub-01" / "decoder" / "sub-01_decoder.json").read_text())
    assert selected["Voxels"] == 50 and selected["VoxelSelection"]["Of"] > roi_voxels > 50


@pytest.mark.slow
def test_raw_input_with_slice_timing_and_lss(tiny_dataset, tmp_path):
    out = tmp_path / "bidsrecon"
    assert main([str(tiny_dataset), str(out), "participant", "-w", str(tmp_path / "work"), "--slice-timing",
                 "--samples", "lss", "--save-decoded-features", *FAST]) == 0
    from bidsrecon.decoding.decoded_features import load_decoded_features

    decoded, items, metadata = load_decoded_features(out / "sub-01" / "decoder" / "sub-01_desc-decoded_features.h5")
    assert metadata["Encoder"] == "efficientnet-lite0-random"
    assert all(len(values) == len(items) for values in decoded.values()) and set(items["set"]) >= {"natural"}
    motion = pd.read_csv(next((tmp_path / "work").rglob("realign/mapflow/_realign0/*motion*.tsv")), sep="\t")
    assert {"trans_x", "rot_z"} <= set(motion.columns) and motion["trans_x"].abs().max() > 0
    assert len(pd.read_csv(out / "sub-01" / "sub-01_desc-sets_metrics.tsv", sep="\t")) == 4


@pytest.mark.slow
def test_generator_optimiser_with_snapshots(tiny_dataset, tmp_path):
    import torch

    from bidsrecon.recon.generator import random_generator

    weights = tmp_path / "dgn_random.pt"
    torch.save(random_generator(seed=1)._module.state_dict(), weights)
    out = tmp_path / "bidsrecon"
    assert main([str(tiny_dataset), str(out), "participant", "-w", str(tmp_path / "work"), "--skip-bids-validation",
                 "--encoder", "efficientnet-lite0-random", "--image-size", "32", "--iterations", "6",
                 "--optimiser", "generator", "--generator-weights", str(weights), "--generator-latent-max", "8",
                 "--snapshot-every", "3", "--batch-size", "4", "--nprocs", "1"]) == 0
    recons = sorted((out / "sub-01" / "recon").glob("*_recon.png"))
    sidecar = json.loads(recons[0].with_suffix(".json").read_text())
    settings = sidecar["OptimizerSettings"]
    assert settings["optimiser"] == "generator" and settings["n_iter"] == 6 and settings["latent_max"] == 8
    assert settings["latent_decay"] == 0.01 and settings["momentum"] == 0.9  # the paper's defaults
    assert "dgn_random.pt" in settings["generator"] and len(settings["generator_sha256"]) == 64
    assert settings["device"] == "cpu" and not settings["mixed_precision"]
    assert "latent" in sidecar["Optimizer"]
    snapshots = sorted((out / "sub-01" / "recon" / "snapshots").glob("*.png"))
    assert len(snapshots) == 2 * len(recons)
    last = out / "sub-01" / "recon" / "snapshots" / recons[0].name.replace("_desc-", "_chunk-6_desc-")
    assert Image.open(last).tobytes() == Image.open(recons[0]).tobytes()
    code, report = validate(out)
    assert code == 0, report


@pytest.mark.slow
def test_feature_cache_is_reused_and_memory_limit_respected(tiny_dataset, tmp_path):
    out, work = tmp_path / "bidsrecon", tmp_path / "work"
    # The packaged weights: a random encoder's weights would follow --seed, and so its cache keys.
    common = [str(tiny_dataset), str(out), "participant", "-w", str(work), "--skip-bids-validation",
              "--image-size", "32", "--iterations", "3", "--nprocs", "1", "--feature-cache", "float16", "--mem", "6G"]
    assert main(common) == 0
    entries = {path: path.stat().st_mtime_ns for path in (work / "feature_cache").rglob("*") if path.is_file()}
    assert entries, "the first run wrote no feature cache"
    first = pd.read_csv(out / "sub-01" / "sub-01_desc-decoding_metrics.tsv", sep="\t")
    # Another seed re-runs the decoding (new alpha-search sample): it reads the cache, writes nothing new.
    assert main([*common, "--seed", "1"]) == 0
    assert {path: path.stat().st_mtime_ns for path in (work / "feature_cache").rglob("*") if path.is_file()} == entries
    second = pd.read_csv(out / "sub-01" / "sub-01_desc-decoding_metrics.tsv", sep="\t")
    assert list(second["layer"]) == list(first["layer"])
    # A limit already spent before decoding is a clear error, not an out-of-memory crash.
    result = main([*common, "--mem", "200M", "--seed", "2"])
    assert result == 1


@pytest.mark.slow
def test_per_unit_decoder_mode(tiny_dataset, tmp_path):
    out = tmp_path / "bidsrecon"
    assert main([str(tiny_dataset), str(out), "participant", "-w", str(tmp_path / "work"), "--skip-bids-validation",
                 "--encoder", "efficientnet-lite0-random", "--image-size", "32", "--iterations", "3", "--nprocs", "1",
                 "--decoder", "fastl2lir", "--layers", "block2", "block3"]) == 0
    decoder = json.loads((out / "sub-01" / "decoder" / "sub-01_decoder.json").read_text())
    assert decoder["Format"] == "bidsrecon-per-unit-decoder" and "fastl2lir" in decoder["Method"]
    # The pixels pseudo-layer is decoded per unit too (every pixel its own ridge).
    assert decoder["Layers"] == ["block2", "block3", "pixels"] and decoder["Alpha"]["block2"] == 100.0
    accuracy = pd.read_csv(out / "sub-01" / "sub-01_desc-decoding_metrics.tsv", sep="\t")
    assert set(accuracy["layer"]) == {"block2", "block3", "pixels"}
    # The same decoders in the Kamitani lab's cookbook layout, tied to the mask beside them.
    from bidsrecon.decoding.fastl2lir_folders import read_fastl2lir_folders

    folders = read_fastl2lir_folders(out / "sub-01" / "decoder" / "fastl2lir")
    assert list(folders.decoders) == ["block2", "block3", "pixels"]
    assert (out / "sub-01" / "decoder" / "fastl2lir" / "block2" / "sub-01" / "voxelmask" / "model" / "W.mat").is_file()
    assert folders.description["VoxelMask"] == decoder["VoxelMask"]
    assert folders.description["Voxels"] == decoder["Voxels"]
    code, report = validate(out)
    assert code == 0, report


def test_demo_starts_a_work_dir_of_another_version_afresh(tmp_path, monkeypatch):
    """The app refuses another version's cached results; `make demo` must still run: it cleans them."""
    from bidsrecon import demo
    from bidsrecon.workflow_control import stamp_work_version

    calls = []
    monkeypatch.setattr(demo, "bidsrecon_main", lambda argv: calls.append(argv) or 0)
    bids = tmp_path / "demo" / "bids"
    bids.mkdir(parents=True)
    (bids / "dataset_description.json").write_text("{}")  # simulated already
    work = tmp_path / "demo" / "work"
    (work / "sub_01_wf" / "decode_wf").mkdir(parents=True)
    (work / "sub_01_wf" / "decode_wf" / "result").write_text("an older version's")
    assert demo.main([str(tmp_path / "demo")]) == 0
    assert calls[0][2] == "participant" and "--clean-workdir" in calls[0] and "--clean-workdir" not in calls[1]
    calls.clear()
    stamp_work_version(work, "01")  # as the participant level does: this version's, reused
    assert demo.main([str(tmp_path / "demo")]) == 0
    assert not any("--clean-workdir" in argv for argv in calls)
