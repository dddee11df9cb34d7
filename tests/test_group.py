"""The group level: it reads only the output folder, refuses incomplete participants, and its table's
mean and s.e.m. are numpy's.

The participant level runs once per test session (two participants of the tiny dataset, fast
settings); `participant_outputs` is shared with test_reports.py. Tests that write copy it first.
"""
import json
import shutil
import time

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bidsrecon.cli import main

FAST = ["--encoder", "efficientnet-lite0-random", "--image-size", "32", "--iterations", "20", "--nprocs", "1",
        "--skip-bids-validation"]
MOTION_COLUMNS = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]

_BUILT = {}


def participant_outputs(tmp_path_factory):
    """``(bids_dir, output_dir)`` after the participant level for sub-01 and sub-02, built once per session.

    A module-level cache rather than a fixture of conftest.py, so that test_reports.py reuses the same
    run. sub-01 gets the quality and provenance files (written here by hand, with the contract's names
    and columns, when the participant level does not write them yet); sub-02 is left as it is.
    """
    if "outputs" not in _BUILT:
        from bidsrecon.simulate import simulate_dataset

        root = tmp_path_factory.mktemp("participant_outputs")
        bids = simulate_dataset(root / "bids", n_subjects=2, preset="tiny", seed=0)
        out = root / "bidsrecon"
        assert main([str(bids), str(out), "participant", "-w", str(root / "work"), *FAST]) == 0
        add_quality_and_provenance(bids, out, "01")
        _BUILT["outputs"] = bids, out
    return _BUILT["outputs"]


def add_quality_and_provenance(bids, out, label):
    """Write sub-<label>'s qc/ and log/ files per the contract, where the participant level did not."""
    qc, log = out / f"sub-{label}" / "qc", out / f"sub-{label}" / "log"
    qc.mkdir(parents=True, exist_ok=True)
    log.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(int(label))
    if not list(qc.glob("*_desc-motion_timeseries.tsv")):
        for bold in sorted(bids.glob(f"sub-{label}/ses-*/func/*_bold.nii.gz"))[:3]:
            run_label = bold.name.removeprefix(f"sub-{label}_").removesuffix("_bold.nii.gz")
            volumes = nib.load(bold).shape[3]
            drift = np.cumsum(rng.normal(0, [0.03, 0.03, 0.05, 4e-4, 4e-4, 4e-4], (volumes, 6)), axis=0)
            steps = np.abs(np.diff(drift, axis=0))
            fd = np.concatenate([[0.0], steps[:, :3].sum(axis=1) + 50.0 * steps[:, 3:].sum(axis=1)])
            table = pd.DataFrame(drift, columns=MOTION_COLUMNS).assign(framewise_displacement=fd)
            table.to_csv(qc / f"sub-{label}_{run_label}_desc-motion_timeseries.tsv", sep="\t", index=False,
                         float_format="%.6g")
    tsnr_path = qc / f"sub-{label}_task-perception_desc-tsnr_boldmap.nii.gz"
    if not tsnr_path.is_file():
        mask = nib.load(out / f"sub-{label}" / "func" / f"sub-{label}_task-perception_desc-decoder_mask.nii.gz")
        inside = np.asarray(mask.dataobj) > 0
        tsnr = np.where(inside, 40 + 20 * rng.random(inside.shape), 5 * rng.random(inside.shape)).astype(np.float32)
        nib.save(nib.Nifti1Image(tsnr, mask.affine), tsnr_path)
    provenance = log / f"sub-{label}_desc-provenance_log.json"
    if not provenance.is_file():
        provenance.write_text(json.dumps({
            "Command": ["bidsrecon", str(bids), str(out), "participant", "--participant-label", label, *FAST],
            "Started": "2025-01-01T10:00:00+00:00", "Finished": "2025-01-01T10:00:15+00:00", "WallSeconds": 15.2,
            "Versions": {"bidsrecon": "0.1.0", "python": "3.11", "torch": "2.14.1", "nipype": "1.9"},
            "Device": {"decode": "cpu", "reconstruct": "cpu", "evaluate": "cpu"},
        }, indent=2))


@pytest.fixture(scope="session")
def outputs(tmp_path_factory):
    return participant_outputs(tmp_path_factory)


@pytest.fixture
def outputs_copy(outputs, tmp_path):
    """A private copy of the outputs, for tests that write to them or break them."""
    bids, out = outputs
    return bids, shutil.copytree(out, tmp_path / "bidsrecon")


def read_group_table(out):
    return pd.read_csv(out / "group" / "group_desc-sets_metrics.tsv", sep="\t")


@pytest.mark.slow
def test_group_table_report_and_figures(outputs_copy, capsys):
    bids, out = outputs_copy
    started = time.perf_counter()
    assert main([str(bids), str(out), "group"]) == 0
    seconds = time.perf_counter() - started
    printed = capsys.readouterr().out
    for written in ("group/group_desc-sets_metrics.tsv", "group/group.html", "figures/sub-01_desc-reconstructions_figure.png",
                    "figures/sub-02_desc-reconstructions_figure.png"):
        assert (out / written).is_file() and str(out / written) in printed
    assert seconds < 30, f"the group level took {seconds:.1f} s"

    # Per set and metric: every participant's own value, and the mean and s.e.m. as numpy computes them.
    group = read_group_table(out)
    for participant in ("sub-01", "sub-02"):
        own = pd.read_csv(out / participant / f"{participant}_desc-sets_metrics.tsv", sep="\t").set_index("set")
        rows = group[(group["participant_id"] == participant) & (group["statistic"] == "value")]
        for row in rows.itertuples():
            assert row.value == pytest.approx(own.loc[row.set, row.metric], rel=1e-5, nan_ok=True)
        assert set(rows["metric"]) >= {"identification_pixel", "pixel_correlation"}
    for (set_name, metric), rows in group.groupby(["set", "metric"]):
        values = rows.loc[rows["statistic"] == "value", "value"].to_numpy(dtype=float)
        summary = rows[rows["statistic"] != "value"].set_index("statistic")
        assert len(values) == 2 and (summary["n_participants"] == 2).all()
        assert summary.loc["mean", "value"] == pytest.approx(np.mean(values), rel=1e-5, abs=1e-9)
        assert summary.loc["sem", "value"] == pytest.approx(np.std(values, ddof=1) / np.sqrt(2), rel=1e-5, abs=1e-9)
        assert summary["participant_id"].isna().all()

    # The sidecar describes every column, every metric and every statistic.
    sidecar = json.loads((out / "group" / "group_desc-sets_metrics.json").read_text())
    assert set(sidecar) == set(group.columns)
    assert all(entry["Description"] for entry in sidecar.values())
    assert set(sidecar["metric"]["Levels"]) == set(group["metric"])
    assert sidecar["metric"]["Levels"]["identification_pixel"]
    assert set(sidecar["statistic"]["Levels"]) == set(group["statistic"]) == {"value", "mean", "sem"}


@pytest.mark.slow
def test_group_refuses_incomplete_participants(outputs_copy, capsys):
    bids, out = outputs_copy
    (out / "sub-02" / "sub-02_desc-sets_metrics.tsv").unlink()
    missing_png = sorted((out / "sub-01" / "recon").glob("*_recon.png"))[0]
    missing_png.unlink()
    assert main([str(bids), str(out), "group", "--participant-label", "01", "02", "03"]) == 66
    error = capsys.readouterr().err
    assert "sub-01 lacks" in error and missing_png.name in error
    assert "sub-02 lacks sub-02_desc-sets_metrics.tsv" in error
    assert "sub-03 lacks the folder sub-03/" in error
    assert len(error.strip().splitlines()) == 1  # one clear line
    # Nothing half-written.
    assert not (out / "group").exists() and not (out / "figures").exists()

    # Without labels every sub-* folder is expected: still refused.
    assert main([str(bids), str(out), "group"]) == 66
    (out / "sub-01" / "sub-01_desc-items_metrics.tsv").unlink()
    assert main([str(bids), str(out), "group", "--participant-label", "01"]) == 66
    assert "sub-01 lacks sub-01_desc-items_metrics.tsv" in capsys.readouterr().err


@pytest.mark.slow
def test_participant_label_selects_participants(outputs_copy):
    bids, out = outputs_copy
    shutil.rmtree(out / "sub-02" / "recon")  # broken, but not asked for
    assert main([str(bids), str(out), "group", "--participant-label", "sub-01"]) == 0
    group = read_group_table(out)
    assert set(group["participant_id"].dropna()) == {"sub-01"}
    summary = group[group["statistic"] != "value"]
    assert (summary["n_participants"] == 1).all()
    # No spread with one participant: the s.e.m. is n/a, not 0.
    assert summary.loc[summary["statistic"] == "sem", "value"].isna().all()


def test_group_level_with_no_participant_results(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    assert main([str(tmp_path / "bids"), str(tmp_path / "out"), "group"]) == 66
    assert "no participant results" in capsys.readouterr().err


def test_summarise_skips_missing_values():
    from bidsrecon.group_level import summarise

    wide = pd.DataFrame({
        "participant_id": ["sub-01", "sub-02", "sub-03", "sub-01", "sub-02", "sub-03"],
        "set": ["natural"] * 3 + ["shapes"] * 3,
        "identification_pixel": [0.9, 0.7, np.nan, 0.6, 0.5, 0.8],
        "encoder": ["vgg19"] * 6,
    })
    tidy = summarise(wide).set_index(["set", "metric", "statistic"])
    natural = tidy.loc[("natural", "identification_pixel")]
    assert natural.loc["mean", "value"] == pytest.approx(0.8)
    assert natural.loc["sem", "value"] == pytest.approx(np.std([0.9, 0.7], ddof=1) / np.sqrt(2))
    assert natural.loc["mean", "n_participants"] == 2
    assert tidy.loc[("shapes", "identification_pixel", "sem"), "value"] == pytest.approx(
        np.std([0.6, 0.5, 0.8], ddof=1) / np.sqrt(3))
