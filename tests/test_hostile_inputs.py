"""Hostile inputs (issue 14): a motion reference without structure, NaN voxels in a raw run, and
participants' tables at the group level that cannot be read back.

Each refusal is one line, names the file and the fix, comes with its exit code, and touches
nothing; the times to failure are asserted to stay short.
"""
import json
import logging
import time

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from checks import checksums
from PIL import Image
from scipy.ndimage import gaussian_filter

from bidsrecon.bids.derivatives import item_files
from bidsrecon.cli import main
from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_INPUT_MISSING, BidsReconError
from bidsrecon.interfaces.motion import MeanVolume, Realign
from bidsrecon.interfaces.samples import EpiMask
from bidsrecon.preproc.motion import estimate_motion, reference_volume_problem
from bidsrecon.preproc.motion_checks import check_reference_volume, contaminated_voxels
from bidsrecon.preproc.signal import unusable_voxels
from bidsrecon.simulate import bold as simulated_bold
from bidsrecon.simulate.brain import make_anatomy

VOXEL_MM = 3.0
SHAPE = (24, 24, 16)
N_VOLUMES = 8


def _save(path, data, dtype=np.float32):
    image = nib.Nifti1Image(np.asarray(data, dtype=dtype), np.diag([VOXEL_MM] * 3 + [1.0]))
    image.header.set_zooms((VOXEL_MM,) * 3 + ((2.0,) if np.ndim(data) == 4 else ()))
    nib.save(image, path)
    return str(path)


@pytest.fixture(scope="module")
def head():
    """A noise-free textured brain on background 40, and its brain mask."""
    rng = np.random.default_rng(0)
    anatomy = make_anatomy(SHAPE, VOXEL_MM, 0.7, rng)
    texture = 1.0 + 0.2 * gaussian_filter(rng.standard_normal(SHAPE), 1.5)
    return np.where(anatomy.brain_mask, 1000.0 * texture, 40.0).astype(np.float32), anatomy.brain_mask


@pytest.fixture(scope="module")
def moving_run(head):
    """A small run of the head moving (up to 0.6 mm), and the true motion."""
    volume, _ = head
    motion = simulated_bold.motion_parameters(N_VOLUMES, 0.6, np.random.default_rng(1))
    moved = simulated_bold.move_volumes(np.repeat(volume[..., None], N_VOLUMES, axis=3), motion, VOXEL_MM)
    return moved.astype(np.float32), motion


@pytest.fixture
def interface_log():
    """The records of Nipype's interface logger (its handlers do not propagate once the CLI ran)."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("nipype.interface")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def _folder(path):
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def _refused(call):
    """Run ``call``; returns (the BidsReconError, seconds until it was raised)."""
    started = time.perf_counter()
    with pytest.raises(BidsReconError) as error:
        call()
    return error.value, time.perf_counter() - started


# --- 1. Motion reference sanity ---------------------------------------------------------------------


@pytest.mark.parametrize("content, phrase", [
    (0.0, "is all zero"), (np.nan, "is entirely NaN or infinite"), (500.0, "is constant (every voxel is 500)"),
])
def test_a_reference_run_without_structure_is_refused_before_anything_runs(tmp_path, content, phrase):
    bold = _save(tmp_path / "sub-01_task-x_run-01_bold.nii.gz", np.full(SHAPE + (N_VOLUMES,), content))
    error, seconds = _refused(lambda: check_reference_volume(bold))
    message = str(error)
    assert error.exit_code == EXIT_BAD_ARGUMENTS
    assert message.startswith(f"{bold}: the motion reference, its middle volume (5 of 8), {phrase}")
    assert "Replace the file" in message and "--bids-filter-file" in message
    assert "\n" not in message and seconds < 5


def test_an_all_zero_int16_reference_run_is_refused(tmp_path):
    # As a converter writes a failed run: int16 zeros (scaled on reading).
    bold = _save(tmp_path / "bold.nii.gz", np.zeros(SHAPE + (N_VOLUMES,)), dtype=np.int16)
    with pytest.raises(BidsReconError, match="is all zero"):
        check_reference_volume(bold)


def test_a_run_with_structure_passes_the_check(tmp_path, moving_run):
    volumes, _ = moving_run
    bold = _save(tmp_path / "bold.nii.gz", volumes)
    volume = check_reference_volume(bold)
    np.testing.assert_allclose(volume, volumes[..., N_VOLUMES // 2])
    # A 3-D reference volume, and a 4-D one averaged over time.
    assert check_reference_volume(_save(tmp_path / "ref.nii.gz", volumes[..., 0]), run=bold).shape == SHAPE
    assert check_reference_volume(bold, run="other_bold.nii.gz", mean=True).shape == SHAPE


def test_a_saved_reference_volume_without_structure_names_the_run_and_the_file(tmp_path):
    reference = _save(tmp_path / "sub-01_desc-reference_boldref.nii.gz", np.zeros(SHAPE))
    error, _ = _refused(lambda: check_reference_volume(reference, run="sub-01_ses-2_bold.nii.gz", mean=True))
    assert str(error).startswith(f"sub-01_ses-2_bold.nii.gz: its motion reference {reference} (the volume) is all zero")
    assert "Restore the reference volume" in str(error) and error.exit_code == EXIT_BAD_ARGUMENTS
    error, _ = _refused(lambda: check_reference_volume(reference, fix="Do this."))
    assert str(error).endswith("Do this.")


def test_an_unreadable_reference_is_refused_with_exit_66(tmp_path):
    broken = tmp_path / "bold.nii.gz"
    broken.write_bytes(b"\x00\xff not an image")
    error, _ = _refused(lambda: check_reference_volume(broken))
    assert error.exit_code == EXIT_INPUT_MISSING and str(broken) in str(error)


def test_a_reference_with_too_little_structure_is_refused(head):
    # One bright voxel between the points the registration samples: nothing to register to.
    volume = np.zeros(SHAPE, dtype=np.float32)
    volume[3, 3, 3] = 1000.0
    problem = reference_volume_problem(volume, (VOXEL_MM,) * 3, sample_spacing_mm=12.0)
    assert problem and "too little structure" in problem
    assert reference_volume_problem(head[0], (VOXEL_MM,) * 3) is None


def test_realign_refuses_a_reference_without_structure_in_the_node(tmp_path, moving_run):
    # The same check inside the node: it cannot be bypassed by a caller that skips the pre-flight.
    zero_run = _save(tmp_path / "zero_bold.nii.gz", np.zeros(SHAPE + (N_VOLUMES,)))
    with pytest.raises(BidsReconError, match=r"zero_bold.nii.gz: the motion reference, its middle volume .* all zero"):
        Realign(bold_file=zero_run, tr=2.0).run(cwd=str(tmp_path))
    volumes, _ = moving_run
    good_run = _save(tmp_path / "good_bold.nii.gz", volumes)
    zero_reference = _save(tmp_path / "mean.nii.gz", np.zeros(SHAPE))
    with pytest.raises(BidsReconError, match=r"good_bold.nii.gz: its motion reference .*mean.nii.gz .* all zero"):
        Realign(bold_file=good_run, tr=2.0, reference_file=zero_reference).run(cwd=str(tmp_path))
    # And the library function raises rather than return zeros.
    with pytest.raises(ValueError, match="too little structure"):
        estimate_motion(volumes, (VOXEL_MM,) * 3, reference_volume=np.zeros(SHAPE))


# --- 2. NaN voxels in a raw run ---------------------------------------------------------------------


def test_nan_voxels_are_zeroed_for_realignment_and_left_out_of_the_mask(tmp_path, head, moving_run, interface_log):
    volumes, true_motion = moving_run
    _, brain = head
    inside = np.argwhere(brain)
    bad = [tuple(inside[len(inside) // 2]), tuple(inside[len(inside) // 3]), tuple(inside[2 * len(inside) // 3])]
    broken = volumes.copy()
    broken[bad[0]] = np.nan  # NaN throughout
    broken[bad[1] + (3,)] = np.nan  # in one volume
    broken[bad[2] + (N_VOLUMES // 2,)] = np.inf  # infinite, in the middle (reference) volume
    bold = _save(tmp_path / "sub-01_task-x_run-01_bold.nii.gz", broken)

    result = Realign(bold_file=bold, tr=2.0).run(cwd=str(tmp_path))
    motion = pd.read_csv(result.outputs.motion_file, sep="\t")
    clean = Realign(bold_file=_save(tmp_path / "clean_bold.nii.gz", volumes), tr=2.0).run(cwd=_folder(tmp_path / "c"))
    clean_motion = pd.read_csv(clean.outputs.motion_file, sep="\t")
    # Motion correction ran, and three voxels of ~900 barely move the estimates.
    np.testing.assert_allclose(motion.iloc[:, :3], clean_motion.iloc[:, :3], atol=0.05)
    np.testing.assert_allclose(motion.iloc[:, 3:6], clean_motion.iloc[:, 3:6], atol=1e-3)

    # One warning naming the run and the count.
    warnings = [record.getMessage() for record in interface_log if "NaN or infinite" in record.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith(f"{bold}: 3 of {np.prod(SHAPE)} voxels")

    # The realigned run is finite, and the voxels that were NaN (and those that read them) are 0 throughout.
    realigned = nib.load(result.outputs.realigned_file).get_fdata(dtype=np.float32)
    assert np.isfinite(realigned).all()
    for voxel in bad:
        assert (realigned[voxel] == 0).all()
    zeroed = (realigned == 0).all(axis=3) & brain
    assert 3 <= zeroed.sum() <= 3 * 27  # a voxel and at most its neighbours

    # Downstream: the brain mask of the mean volume leaves them out (nilearn's closing alone fills
    # them in), and the samples would drop them as unusable.
    mean = MeanVolume(in_file=result.outputs.realigned_file).run(cwd=_folder(tmp_path / "mean"))
    mask = np.asanyarray(nib.load(EpiMask(bold_file=mean.outputs.out_file).run(
        cwd=_folder(tmp_path / "mask")).outputs.out_mask).dataobj).astype(bool)
    assert mask.sum() > 0.5 * brain.sum()
    for voxel in bad:
        assert not mask[voxel]
    assert not (mask & zeroed).any()
    series = realigned.reshape(-1, N_VOLUMES).T
    flagged = unusable_voxels(series).reshape(SHAPE)
    assert all(flagged[voxel] for voxel in bad)


def test_contaminated_voxels_follow_the_motion():
    bad = np.zeros((9, 9, 9), dtype=bool)
    bad[4, 4, 4] = True
    still = contaminated_voxels(bad, np.zeros((3, 6)), (VOXEL_MM,) * 3)
    np.testing.assert_array_equal(still, bad)
    half_voxel = contaminated_voxels(bad, np.array([[VOXEL_MM / 2, 0, 0, 0, 0, 0]]), (VOXEL_MM,) * 3)
    assert half_voxel.sum() == 2 and half_voxel[4, 4, 4] and half_voxel[3, 4, 4]


def test_a_run_with_nothing_finite_is_refused_naming_the_run(tmp_path):
    all_nan = _save(tmp_path / "nan_bold.nii.gz", np.full(SHAPE + (N_VOLUMES,), np.nan))
    error, seconds = _refused(lambda: Realign(bold_file=all_nan, tr=2.0).run(cwd=str(tmp_path)))
    assert str(error).startswith(f"{all_nan}: every value is NaN or infinite: the run holds no data. Replace the file")
    assert error.exit_code == EXIT_BAD_ARGUMENTS and seconds < 10


def test_a_run_with_one_volume_of_nan_is_refused_naming_the_volume(tmp_path, moving_run):
    volumes = moving_run[0].copy()
    volumes[..., 2] = np.nan
    bold = _save(tmp_path / "bold.nii.gz", volumes)
    with pytest.raises(BidsReconError, match=r"every voxel is NaN or infinite in at least one volume "
                                             r"\(1 of 8 volumes entirely: 3\)"):
        Realign(bold_file=bold, tr=2.0).run(cwd=str(tmp_path))


# --- 3. Group level -----------------------------------------------------------------------------------


def _tsv(path, table):
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, sep="\t", index=False, na_rep="n/a", float_format="%.6g")


def make_outputs(root, labels=("01", "02"), drop=()):
    """A hand-made output dataset with the files the group level reads: ``(bids_dir, output_dir)``.

    ``drop``: metric columns left out of every participant's ``desc-sets_metrics.tsv``.
    """
    bids, out = root / "bids", root / "out"
    bids.mkdir(parents=True)
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.9.0"}))
    out.mkdir()
    (out / "dataset_description.json").write_text(json.dumps({"Name": "bidsrecon", "BIDSVersion": "1.9.0",
                                                              "DatasetType": "derivative"}))
    rng = np.random.default_rng(0)
    for label in labels:
        folder = out / f"sub-{label}"
        items = pd.DataFrame({"set": ["natural"] * 3, "stimulus": ["a", "b", "c"], "n_trials": 2,
                              "pixel_correlation": rng.random(3), "identification_pixel": rng.random(3)})
        _tsv(folder / f"sub-{label}_desc-items_metrics.tsv", items)
        metrics = pd.DataFrame({"set": ["natural"], "n_items": [3], "identification_pixel": [rng.random()],
                                "pixel_correlation": [rng.random()], "ssim": [rng.random()], "encoder": ["vgg19"]})
        _tsv(folder / f"sub-{label}_desc-sets_metrics.tsv", metrics.drop(columns=list(drop)))
        for stimulus in items["stimulus"]:
            files = item_files(folder, label, "natural", stimulus)
            files["recon"].parent.mkdir(exist_ok=True)
            for kind in ("recon", "stimulus"):
                pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(files[kind])
    return bids, out


def _group(bids, out, *extra):
    started = time.perf_counter()
    code = main([str(bids), str(out), "group", "--skip-bids-validation", *extra])
    return code, time.perf_counter() - started


GROUP_OUTPUTS = ("group", "figures")  # the folders and everything in them


@pytest.mark.parametrize("case", ["binary_metrics", "utf16_metrics", "empty_metrics", "binary_items",
                                  "binary_sidecar", "nested_sidecar", "not_a_table"])
def test_group_refuses_an_unreadable_table_in_one_line_and_touches_nothing(tmp_path, capsys, case):
    bids, out = make_outputs(tmp_path)
    metrics = out / "sub-02" / "sub-02_desc-sets_metrics.tsv"
    target = {
        "binary_metrics": metrics, "utf16_metrics": metrics, "empty_metrics": metrics, "not_a_table": metrics,
        "binary_items": out / "sub-02" / "sub-02_desc-items_metrics.tsv",
        "binary_sidecar": metrics.with_suffix(".json"), "nested_sidecar": metrics.with_suffix(".json"),
    }[case]
    if case.startswith("binary"):
        target.write_bytes(bytes(range(256)) * 4)  # not UTF-8 (0x80 on)
    elif case == "utf16_metrics":
        target.write_bytes(metrics.read_text().encode("utf-16"))
    elif case == "empty_metrics":
        target.write_bytes(b"")
    elif case == "nested_sidecar":
        target.write_text("[" * 100_000 + "]" * 100_000)
    else:
        target.write_text("this is not\na metrics table\n")
    before = checksums(out)
    code, seconds = _group(bids, out)
    error = capsys.readouterr().err.strip()
    assert code == EXIT_INPUT_MISSING, error
    assert len(error.splitlines()) == 1 and error.startswith("bidsrecon: error: unusable participant tables: ")
    assert f"{target}: " in error and "Rerun the participant level" in error
    assert checksums(out) == before and not (out / "group").exists() and not (out / "figures").exists()
    assert seconds < 10


def test_group_refuses_tables_that_lack_every_metric(tmp_path, capsys):
    bids, out = make_outputs(tmp_path, drop=("identification_pixel", "pixel_correlation", "ssim"))
    before = checksums(out)
    code, seconds = _group(bids, out)
    error = capsys.readouterr().err.strip()
    assert code == EXIT_INPUT_MISSING and len(error.splitlines()) == 1
    for label in ("01", "02"):
        path = out / f"sub-{label}" / f"sub-{label}_desc-sets_metrics.tsv"
        assert f"{path}: none of the metric columns identification_pixel, pixel_correlation, ssim" in error
    assert checksums(out) == before and seconds < 10


def test_group_refuses_metrics_that_are_all_missing(tmp_path, capsys):
    # The columns are there, but no participant has a value in any of them.
    bids, out = make_outputs(tmp_path, drop=("n_items",))
    for label in ("01", "02"):
        path = out / f"sub-{label}" / f"sub-{label}_desc-sets_metrics.tsv"
        table = pd.read_csv(path, sep="\t")
        table[["identification_pixel", "pixel_correlation", "ssim"]] = np.nan
        _tsv(path, table)
    before = checksums(out)
    code, _ = _group(bids, out)
    error = capsys.readouterr().err.strip()
    assert code == EXIT_INPUT_MISSING and "no metric has a value in any participant's table" in error
    assert str(out / "sub-01" / "sub-01_desc-sets_metrics.tsv") in error and checksums(out) == before


def test_group_warns_about_a_table_missing_some_metrics_and_changes_only_its_outputs(tmp_path, capsys, caplog):
    bids, out = make_outputs(tmp_path)
    path = out / "sub-02" / "sub-02_desc-sets_metrics.tsv"
    table = pd.read_csv(path, sep="\t").drop(columns=["ssim"])
    table["pixel_correlation"] = "high"
    _tsv(path, table)
    before = checksums(out)
    with caplog.at_level(logging.WARNING, logger="bidsrecon"):
        code, _ = _group(bids, out)
    assert code == 0, capsys.readouterr().err
    warnings = [record.getMessage() for record in caplog.records if record.name == "bidsrecon"]
    assert warnings == [f"{path}: lacks ssim; has non-numbers in pixel_correlation; the group summary has n/a there "
                        "for sub-02 (rerun the participant level for it to have them)"]
    after = checksums(out)
    assert {name: digest for name, digest in after.items() if not name.startswith(GROUP_OUTPUTS)} == before
    assert {"group/group_desc-sets_metrics.tsv", "group/group.html"} <= set(after)
    group = pd.read_csv(out / "group" / "group_desc-sets_metrics.tsv", sep="\t")
    for metric in ("ssim", "pixel_correlation"):  # n/a for sub-02 alone, still summarised over sub-01
        rows = group[(group["metric"] == metric) & (group["statistic"] == "value")]
        assert list(rows["participant_id"]) == ["sub-01", "sub-02"] and rows["value"].isna().tolist() == [False, True]
    assert (group.loc[group["statistic"] == "mean", "n_participants"] >= 1).all()
