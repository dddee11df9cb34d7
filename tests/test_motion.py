"""Motion (and slice-timing) correction: bidsrecon.preproc.motion and the Realign interface."""
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import gaussian_filter

from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_INPUT_MISSING, BidsReconError
from bidsrecon.interfaces.motion import Realign
from bidsrecon.preproc.motion import (
    MOTION_COLUMNS,
    estimate_motion,
    framewise_displacement,
    resample_volume,
    rigid_matrix,
    rigid_parameters,
)
from bidsrecon.simulate import bold as simulated_bold
from bidsrecon.simulate import dataset
from bidsrecon.simulate.brain import make_anatomy
from bidsrecon.simulate.presets import get_preset

VOXEL_MM = 3.0


def _save(path, data, zooms=(VOXEL_MM,) * 3 + (2.0,), dtype=np.int16):
    affine = np.diag(list(zooms[:3]) + [1.0])
    image = nib.Nifti1Image(np.asarray(np.round(data) if dtype == np.int16 else data, dtype=dtype), affine)
    image.header.set_zooms(zooms[: len(np.shape(data))])
    nib.save(image, path)
    return str(path)


@pytest.fixture(scope="module")
def simulated_run(tmp_path_factory):
    """The first run of the tiny preset's subject as the simulator writes it: (bold file, true motion)."""
    preset = get_preset("tiny")
    stimulus_set, maps = dataset.build_stimuli(preset, 0)
    subject = dataset.build_subject(preset, stimulus_set, maps, 0, 1)
    baseline = simulated_bold.baseline_intensity(subject.anatomy.brain_mask, subject.signal_rng)
    signal = dataset.simulate_run_signal(subject.plans[0], subject, stimulus_set, preset, baseline)
    path = _save(tmp_path_factory.mktemp("motion") / "bold.nii.gz", signal.raw)
    slice_times = simulated_bold.slice_offsets(preset.volume_shape[2], 2.0).tolist()
    return path, signal.motion, slice_times


@pytest.fixture(scope="module")
def textured_head():
    """A noise-free brain with inner texture (so that every rotation shows) on a 24x24x16 grid."""
    rng = np.random.default_rng(0)
    anatomy = make_anatomy((24, 24, 16), VOXEL_MM, 0.7, rng)
    texture = 1.0 + 0.2 * gaussian_filter(rng.standard_normal(anatomy.brain_mask.shape), 1.5)
    return np.where(anatomy.brain_mask, 1000.0 * texture, 40.0)


def test_rigid_parameters_invert_rigid_matrix():
    parameters = np.array([1.5, -0.7, 0.2, 0.05, -0.03, 0.12])
    np.testing.assert_allclose(rigid_parameters(rigid_matrix(parameters)), parameters, atol=1e-12)


def test_estimate_motion_recovers_all_six_parameters_of_noise_free_motion(textured_head):
    n_volumes = 12
    motion = simulated_bold.motion_parameters(n_volumes, 1.5, np.random.default_rng(1))
    moved = simulated_bold.move_volumes(np.repeat(textured_head[..., None], n_volumes, axis=3), motion, VOXEL_MM)
    estimated = estimate_motion(moved, (VOXEL_MM,) * 3, reference_index=0)
    # Same convention as the simulator (which follows fMRIPrep's columns), signs included.
    assert np.abs(estimated[:, :3] - motion[:, :3]).max() < 0.1  # mm, of up to 1.5 mm
    assert np.abs(estimated[:, 3:] - motion[:, 3:]).max() < 0.003  # rad, of up to 0.03 rad
    for column in range(6):
        assert np.corrcoef(estimated[:, column], motion[:, column])[0, 1] > 0.98, MOTION_COLUMNS[column]


def test_resampling_undoes_the_motion(textured_head):
    # Over a voxel of motion: below that, blurring by two trilinear resamplings (the simulator's
    # and ours) costs as much as the motion itself.
    motion = np.array([4.0, -3.0, 2.5, 0.06, -0.04, 0.05])
    moved = simulated_bold.move_volumes(textured_head[..., None], motion[None], VOXEL_MM)[..., 0]
    restored = resample_volume(moved, motion, (VOXEL_MM,) * 3)
    interior = (slice(4, -4),) * 3  # the grid's border repeats edge values
    error_before = np.abs(moved - textured_head)[interior].mean()
    error_after = np.abs(restored - textured_head)[interior].mean()
    assert error_after < 0.5 * error_before


def test_realign_recovers_simulated_head_motion(simulated_run, tmp_path, monkeypatch):
    bold_file, true_motion, _ = simulated_run
    monkeypatch.chdir(tmp_path)
    result = Realign(bold_file=bold_file, tr=2.0).run()
    motion = pd.read_csv(result.outputs.motion_file, sep="\t")
    assert list(motion.columns) == list(MOTION_COLUMNS) + ["framewise_displacement"]
    assert len(motion) == len(true_motion)
    assert np.isnan(motion["framewise_displacement"].iloc[0])  # written as n/a
    for column in range(3):  # the translations the issue asks for: r >= 0.9
        r = np.corrcoef(motion[MOTION_COLUMNS[column]], true_motion[:, column])[0, 1]
        assert r >= 0.9, (MOTION_COLUMNS[column], r)
    realigned = nib.load(result.outputs.realigned_file)
    assert realigned.shape == nib.load(bold_file).shape
    np.testing.assert_allclose(realigned.affine, nib.load(bold_file).affine)


def test_slice_timing_option_changes_the_realigned_data(simulated_run, tmp_path, monkeypatch):
    bold_file, _, slice_times = simulated_run
    monkeypatch.chdir(tmp_path)
    plain = Realign(bold_file=bold_file, tr=2.0, slice_timing=slice_times).run()
    plain_data = nib.load(plain.outputs.realigned_file).get_fdata()
    corrected = Realign(bold_file=bold_file, tr=2.0, slice_timing=slice_times, slice_timing_enabled=True).run()
    corrected_data = nib.load(corrected.outputs.realigned_file).get_fdata()
    # Motion is estimated before slice timing, so the parameters are the same.
    pd.testing.assert_frame_equal(pd.read_csv(plain.outputs.motion_file, sep="\t"),
                                  pd.read_csv(corrected.outputs.motion_file, sep="\t"))
    changed = np.abs(corrected_data - plain_data).max(axis=(0, 1, 3))
    # Ascending slices, reference at the middle: the middle slices move least, the outer ones most.
    assert changed[0] > 0 and changed[-1] > 0
    assert changed[[0, -1]].min() > changed[len(changed) // 2]


def test_framewise_displacement():
    motion = np.zeros((3, 6))
    motion[1] = [0.1, -0.2, 0.0, 0.0, 0.0, 0.002]
    fd = framewise_displacement(motion)
    assert np.isnan(fd[0])
    np.testing.assert_allclose(fd[1:], [0.3 + 50 * 0.002, 0.3 + 50 * 0.002])


def test_realign_rejects_a_3d_bold(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _save(tmp_path / "three_d.nii.gz", np.ones((4, 4, 4)), zooms=(3.0, 3.0, 3.0))
    with pytest.raises(BidsReconError, match="three_d.nii.gz.*must be 4-D") as error:
        Realign(bold_file=path, tr=2.0).run()
    assert error.value.exit_code == EXIT_BAD_ARGUMENTS


def test_realign_needs_slice_timing_when_asked(simulated_run, tmp_path, monkeypatch):
    bold_file, _, slice_times = simulated_run
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BidsReconError, match="no SliceTiming") as error:
        Realign(bold_file=bold_file, tr=2.0, slice_timing_enabled=True).run()
    assert error.value.exit_code == EXIT_INPUT_MISSING
    with pytest.raises(BidsReconError, match="lists 3 times for 8 slices"):
        Realign(bold_file=bold_file, tr=2.0, slice_timing=slice_times[:3], slice_timing_enabled=True).run()
    with pytest.raises(BidsReconError, match=r"must lie in \[0, RepetitionTime"):
        Realign(bold_file=bold_file, tr=2.0, slice_timing=[t + 1.5 for t in slice_times],
                slice_timing_enabled=True).run()


def test_reversed_slice_encoding_direction_reads_slice_timing_backwards(simulated_run, tmp_path, monkeypatch):
    bold_file, _, slice_times = simulated_run
    monkeypatch.chdir(tmp_path)
    forward = Realign(bold_file=bold_file, tr=2.0, slice_timing=slice_times, slice_timing_enabled=True).run()
    backward = Realign(bold_file=bold_file, tr=2.0, slice_timing=slice_times[::-1], slice_timing_enabled=True,
                       slice_encoding_direction="k-").run()
    np.testing.assert_array_equal(nib.load(forward.outputs.realigned_file).get_fdata(),
                                  nib.load(backward.outputs.realigned_file).get_fdata())


def test_runs_of_another_session_are_registered_to_a_common_reference(textured_head):
    # "Session 2" sits 2 mm and 0.03 rad away from the reference of session 1, plus its own motion.
    n_volumes = 6
    offset = np.array([2.0, -1.0, 0.5, 0.0, 0.0, 0.03])
    motion = offset + simulated_bold.motion_parameters(n_volumes, 0.3, np.random.default_rng(2))
    moved = simulated_bold.move_volumes(np.repeat(textured_head[..., None], n_volumes, axis=3), motion, VOXEL_MM)
    own = estimate_motion(moved, (VOXEL_MM,) * 3)
    common = estimate_motion(moved, (VOXEL_MM,) * 3, reference_volume=textured_head)
    # Against its own middle volume the session offset is invisible; against the common reference it is found.
    assert np.abs(own[:, 0]).max() < 1.0
    assert np.abs(common[:, :3] - motion[:, :3]).max() < 0.15
    assert np.abs(common[:, 5] - motion[:, 5]).max() < 0.005


def test_realign_to_a_reference_on_another_grid_is_refused(simulated_run, tmp_path):
    path, _, _ = simulated_run
    reference = _save(tmp_path / "reference.nii.gz", np.ones((5, 5, 5)), zooms=(VOXEL_MM,) * 3, dtype=np.float32)
    with pytest.raises(BidsReconError, match="differs from the reference run"):
        Realign(bold_file=path, tr=2.0, reference_file=reference).run(cwd=str(tmp_path))
