"""--decoders-dir: a decoder trained once, applied to later sessions without retraining."""
import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import validate

from bidsrecon.cli import main, parse_args
from bidsrecon.decoding.artifact import load_decoder
from bidsrecon.decoding.decoded_features import load_decoded_features
from bidsrecon.decoding.sidecar import read_decoder_description
from bidsrecon.encoders.base import file_sha256
from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_INPUT_MISSING, BidsReconError

FAST = ["--encoder", "efficientnet-lite0-random", "--image-size", "32", "--iterations", "10", "--nprocs", "1"]
DECODER_FILES = ("sub-01_decoder.json", "sub-01_decoder.safetensors", "sub-01_desc-voxelmask_decoder.nii.gz",
                 "sub-01_desc-reference_boldref.nii.gz")


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    """A normal run (training included) on the tiny dataset: its output holds the decoder.

    Its small image is the pRF decoder's (the default), whose models a saved decoder fits again when
    it is applied: the same decoded features, pixels included."""
    root = tmp_path_factory.mktemp("trained")
    out = root / "bidsrecon"
    assert main([str(tiny_dataset), str(out), "participant", "-w", str(root / "work"), "--save-decoded-features",
                 "--skip-bids-validation", *FAST]) == 0
    return out


@pytest.fixture(scope="module")
def later_sessions(tiny_dataset, tmp_path_factory):
    """The tiny dataset without its training sessions: test sessions "acquired later"."""
    copy = tmp_path_factory.mktemp("later") / "bids"
    shutil.copytree(tiny_dataset, copy)
    for session in (copy / "sub-01").glob("ses-perceptionNaturalImageTraining*"):
        shutil.rmtree(session)
    return copy


def saved_copy(trained, folder):
    """A copy of the trained output's decoder folder, to tamper with."""
    shutil.copytree(trained / "sub-01" / "decoder", folder / "sub-01" / "decoder")
    return folder


def run_apply(bids_dir, decoders_dir, tmp_path, *extra):
    return main([str(bids_dir), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                 "--decoders-dir", str(decoders_dir), "--skip-bids-validation", *FAST, *extra])


@pytest.mark.slow
def test_normal_run_saves_the_motion_reference(trained):
    folder = trained / "sub-01" / "decoder"
    sidecar = json.loads((folder / "sub-01_decoder.json").read_text())
    reference = folder / "sub-01_desc-reference_boldref.nii.gz"
    assert sidecar["MotionReference"]["File"] == reference.name
    assert sidecar["MotionReference"]["SHA256"] == file_sha256(reference)
    mask = nib.load(folder / sidecar["VoxelMask"]["File"])
    volume = nib.load(reference)
    assert volume.ndim == 3 and volume.shape == mask.shape and np.allclose(volume.affine, mask.affine)


@pytest.mark.slow
def test_saved_decoder_applied_to_later_sessions(trained, later_sessions, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    # Validated here: the copy without training sessions is still a BIDS dataset.
    assert main([str(later_sessions), str(out), "participant", "-w", str(work), "--decoders-dir", str(trained),
                 "--save-decoded-features", *FAST]) == 0

    # Nothing was trained: no training run was read and the decode step loaded the saved decoder.
    realign_report = next(work.rglob("realign/_report/report.rst")).read_text()
    assert "NaturalImageTraining" not in realign_report and "perceptionNaturalImageTest01" in realign_report
    decode_dir = next(work.rglob("decode/_report")).parent
    assert str(trained / "sub-01" / "decoder" / "sub-01_decoder.json") in (decode_dir / "_report" / "report.rst").read_text()
    assert not list(decode_dir.glob("*decoder*"))  # a fit would have saved its decoder here
    assert not any(work.rglob("build_mask")) and not any(work.rglob("mean_reference"))

    # The applied decoder is copied byte for byte, and named by every reconstruction.
    for name in DECODER_FILES:
        assert (out / "sub-01" / "decoder" / name).read_bytes() == (trained / "sub-01" / "decoder" / name).read_bytes()
    applied = load_decoder(out / "sub-01" / "decoder" / "sub-01_decoder")
    assert applied.alpha_ == load_decoder(trained / "sub-01" / "decoder" / "sub-01_decoder").alpha_
    recon_sidecar = json.loads(next((out / "sub-01" / "recon").glob("*_recon.json")).read_text())
    assert recon_sidecar["Decoder"]["FittedInThisRun"] is False
    assert recon_sidecar["Decoder"]["ArraysSHA256"] == file_sha256(out / "sub-01" / "decoder" /
                                                                   "sub-01_decoder.safetensors")

    # Same reference volume, same mask, same decoder: the same decoded features as the normal run,
    # the small image included (its pRF models fitted again from the saved training samples).
    assert read_decoder_description(trained / "sub-01" / "decoder" / "sub-01_decoder")["PixelDecoder"]["Method"] == "prf"
    features = "sub-01/decoder/sub-01_desc-decoded_features.h5"
    before, items_before, _ = load_decoded_features(trained / features)
    after, items_after, _ = load_decoded_features(out / features)
    assert items_after.equals(items_before)
    for layer in before:
        np.testing.assert_allclose(after[layer], before[layer], rtol=1e-5, atol=1e-6)
    accuracy = (out / "sub-01" / "sub-01_desc-decoding_metrics.tsv").read_text()
    assert accuracy == (trained / "sub-01" / "sub-01_desc-decoding_metrics.tsv").read_text()

    code, report = validate(out)
    assert code == 0, report
    # The new output is itself a decoders directory.
    assert run_apply(later_sessions, out, tmp_path / "again", "--session-label", "perceptionNaturalImageTest01") == 0


@pytest.mark.slow
def test_changed_mask_is_refused(trained, tiny_dataset, tmp_path, capsys):
    decoders = saved_copy(trained, tmp_path / "decoders")
    mask_file = decoders / "sub-01" / "decoder" / "sub-01_desc-voxelmask_decoder.nii.gz"
    mask = nib.load(mask_file)
    data = np.asanyarray(mask.dataobj).copy()
    data[tuple(np.argwhere(data)[:5].T)] = 0  # five voxels dropped
    nib.save(nib.Nifti1Image(data, mask.affine, mask.header), mask_file)
    assert run_apply(tiny_dataset, decoders, tmp_path) == EXIT_BAD_ARGUMENTS
    message = capsys.readouterr().err
    assert str(mask_file) in message and "changed after saving" in message


@pytest.mark.slow
def test_other_encoder_is_refused(trained, tiny_dataset, tmp_path, capsys):
    assert run_apply(tiny_dataset, trained, tmp_path, "--encoder", "vgg19-random") == EXIT_BAD_ARGUMENTS
    message = capsys.readouterr().err
    assert "efficientnet-lite0-random" in message and "vgg19-random" in message
    assert "sub-01_decoder.json" in message


@pytest.mark.slow
def test_changed_training_image_is_refused(trained, tiny_dataset, tmp_path, capsys):
    stimuli = tmp_path / "stimuli"
    shutil.copytree(tiny_dataset / "stimuli", stimuli)
    name = read_decoder_description(trained / "sub-01" / "decoder" / "sub-01_decoder")["TrainingStimuli"][3]
    image = next(stimuli.glob(f"{name}.*"))
    image.write_bytes(image.read_bytes() + b"\0")  # same picture, other bytes: still another file
    assert run_apply(tiny_dataset, trained, tmp_path, "--stimuli-dir", str(stimuli)) == EXIT_BAD_ARGUMENTS
    message = capsys.readouterr().err
    assert name in message and "differ" in message


@pytest.mark.slow
def test_participant_without_a_saved_decoder(tiny_dataset, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_apply(tiny_dataset, empty, tmp_path) == EXIT_INPUT_MISSING
    assert str(empty / "sub-01" / "decoder" / "sub-01_decoder.json") in capsys.readouterr().err


@pytest.mark.slow
def test_raw_input_needs_the_motion_reference(trained, tiny_dataset, tmp_path, capsys):
    decoders = saved_copy(trained, tmp_path / "decoders")
    sidecar_file = decoders / "sub-01" / "decoder" / "sub-01_decoder.json"
    sidecar = json.loads(sidecar_file.read_text())
    del sidecar["MotionReference"]
    sidecar_file.write_text(json.dumps(sidecar))
    assert run_apply(tiny_dataset, decoders, tmp_path) == EXIT_BAD_ARGUMENTS
    message = capsys.readouterr().err
    assert "motion reference" in message and str(sidecar_file) in message


def test_options_of_a_fit_are_refused(tmp_path):
    common = [str(tmp_path), str(tmp_path.parent / "out"), "participant", "--decoders-dir", str(tmp_path)]
    for option in (["--n-voxels", "50"], ["--roi", "V1"], ["--decoder", "kernel"]):
        with pytest.raises(BidsReconError, match=option[0]) as caught:
            parse_args([*common, *option])
        assert caught.value.exit_code == EXIT_BAD_ARGUMENTS
    config = parse_args(common)
    assert config.decoders_dir == tmp_path.resolve() and config.decoder == "kernel"
    with pytest.raises(BidsReconError, match="no such folder") as caught:
        parse_args([*common[:-1], str(tmp_path / "absent")])
    assert caught.value.exit_code == EXIT_INPUT_MISSING


def test_unknown_sidecar_format_is_refused_clearly(tmp_path):
    (tmp_path / "sub-01_decoder.json").write_text(json.dumps({"Format": "some-other-decoder"}))
    (tmp_path / "sub-01_decoder.safetensors").write_bytes(b"")
    with pytest.raises(BidsReconError, match="bidsrecon-per-unit-decoder") as caught:
        read_decoder_description(tmp_path / "sub-01_decoder")
    assert caught.value.exit_code == EXIT_BAD_ARGUMENTS and "sub-01_decoder.json" in str(caught.value)


@pytest.mark.slow
def test_fmriprep_input(tiny_fmriprep_dataset, tmp_path, capsys):
    derivatives = ["--derivatives", f"fmriprep={tiny_fmriprep_dataset / 'derivatives' / 'fmriprep'}"]
    trained = tmp_path / "trained"
    # The ridge's small image, the one the saved decoder decodes (see ``trained``).
    assert main([str(tiny_fmriprep_dataset), str(trained), "participant", "-w", str(tmp_path / "work"),
                 "--save-decoded-features", "--skip-bids-validation", "--pixel-decoder", "ridge", *derivatives,
                 *FAST]) == 0
    sidecar = json.loads((trained / "sub-01" / "decoder" / "sub-01_decoder.json").read_text())
    assert "MotionReference" not in sidecar  # no realignment here: fMRIPrep's runs share its grid

    # The test sessions only (no training run selected), fMRIPrep's runs sampled in the saved mask.
    applied = tmp_path / "applied"
    assert run_apply(tiny_fmriprep_dataset, trained, applied, "--save-decoded-features", *derivatives,
                     "--session-label", "perceptionNaturalImageTest01", "perceptionArtificialImage01") == 0
    features = "sub-01/decoder/sub-01_desc-decoded_features.h5"
    before, items_before, _ = load_decoded_features(trained / features)
    after, items_after, _ = load_decoded_features(applied / "out" / features)
    assert set(items_after["set"]) == {"natural", "shapes"}
    rows = [int(np.flatnonzero((items_before["set"] == row.set) & (items_before["stimulus"] == row.stimulus))[0])
            for row in items_after.itertuples()]
    for layer in before:
        np.testing.assert_allclose(after[layer], before[layer][rows], rtol=1e-5, atol=1e-6)

    # A decoder of fMRIPrep input has no reference volume to realign raw runs to.
    assert run_apply(tiny_fmriprep_dataset, trained, tmp_path / "raw") == EXIT_BAD_ARGUMENTS
    assert "motion reference" in capsys.readouterr().err


PER_UNIT = ["--decoder", "fastl2lir", "--layers", "block2"]


@pytest.fixture(scope="module")
def trained_per_unit(tiny_dataset, tmp_path_factory):
    """A normal run with per-unit decoders (--decoder fastl2lir): its output holds them, and their folders."""
    root = tmp_path_factory.mktemp("trained_per_unit")
    out = root / "bidsrecon"
    assert main([str(tiny_dataset), str(out), "participant", "-w", str(root / "work"), "--save-decoded-features",
                 "--skip-bids-validation", *FAST, *PER_UNIT]) == 0
    return out


def _same_decoded_features(before_dir, after_dir):
    features = "sub-01/decoder/sub-01_desc-decoded_features.h5"
    before, items_before, _ = load_decoded_features(before_dir / features)
    after, items_after, _ = load_decoded_features(after_dir / features)
    assert items_after.equals(items_before)
    assert list(after) == list(before)
    for layer in before:
        np.testing.assert_allclose(after[layer], before[layer], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_saved_per_unit_decoder_applied(trained_per_unit, later_sessions, tmp_path):
    folder = trained_per_unit / "sub-01" / "decoder"
    assert read_decoder_description(folder / "sub-01_decoder")["Format"] == "bidsrecon-per-unit-decoder"
    with pytest.raises(BidsReconError, match="per-unit decoder.*FastL2LiR folders"):  # not a kernel decoder
        load_decoder(folder / "sub-01_decoder")
    assert run_apply(later_sessions, trained_per_unit, tmp_path, "--save-decoded-features") == 0
    out, work = tmp_path / "out", tmp_path / "work"
    decode_dir = next(work.rglob("decode/_report")).parent
    assert not list(decode_dir.glob("*decoder*"))  # nothing fitted
    # Same reference volume, same mask, same decoders: the same decoded features as the fit run's.
    _same_decoded_features(trained_per_unit, out)
    # The decoding accuracy too (the folders' training mean is the fitted one, to float32 rounding).
    accuracy = {path: pd.read_csv(path / "sub-01" / "sub-01_desc-decoding_metrics.tsv", sep="\t")
                for path in (trained_per_unit, out)}
    pd.testing.assert_frame_equal(accuracy[out], accuracy[trained_per_unit], rtol=1e-4)
    # The applied decoder is copied byte for byte, folders included: the output is a decoders directory too.
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "_desc-decoded_features" not in path.name:  # an output of each run, not the decoder
            assert (out / "sub-01" / "decoder" / path.relative_to(folder)).read_bytes() == path.read_bytes()
    assert (out / "sub-01" / "decoder" / "fastl2lir" / "block2" / "sub-01" / "voxelmask" / "model" / "W.mat").is_file()
    recon_sidecar = json.loads(next((out / "sub-01" / "recon").glob("*_recon.json")).read_text())
    assert recon_sidecar["Decoder"]["FittedInThisRun"] is False
    assert run_apply(later_sessions, out, tmp_path / "again", "--session-label", "perceptionNaturalImageTest01") == 0


@pytest.mark.slow
def test_per_unit_decoder_refuses_the_lab_corrections(trained_per_unit, tiny_dataset, tmp_path, capsys):
    assert run_apply(tiny_dataset, trained_per_unit, tmp_path, "--feature-correction", "lab2019") == EXIT_BAD_ARGUMENTS
    message = capsys.readouterr().err
    assert "lab2019" in message and "sub-01_decoder.json" in message and "--feature-correction spread" in message


@pytest.mark.slow
def test_per_unit_decoder_needs_its_folders(trained_per_unit, tiny_dataset, tmp_path, capsys):
    decoders = saved_copy(trained_per_unit, tmp_path / "decoders")
    folders = decoders / "sub-01" / "decoder" / "fastl2lir"
    shutil.rmtree(folders / "block2")
    assert run_apply(tiny_dataset, decoders, tmp_path, "--layers", "block2") == EXIT_INPUT_MISSING
    assert str(folders / "block2") in capsys.readouterr().err
    (folders / "fastl2lir_folders.json").unlink()
    assert run_apply(tiny_dataset, decoders, tmp_path) == EXIT_INPUT_MISSING
    assert str(folders / "fastl2lir_folders.json") in capsys.readouterr().err


def test_the_labs_folders_alone_are_refused_clearly(tmp_path):
    from bidsrecon.decoding.saved import find_saved_decoder

    description = tmp_path / "sub-01" / "decoder" / "fastl2lir" / "fastl2lir_folders.json"
    description.parent.mkdir(parents=True)
    description.write_text(json.dumps({"Subject": "sub-01", "ROI": "VC", "Layers": {}, "Voxels": 1}))
    with pytest.raises(BidsReconError, match="apply_fastl2lir_folders") as caught:
        find_saved_decoder(tmp_path, "01")
    assert caught.value.exit_code == EXIT_BAD_ARGUMENTS and str(description) in str(caught.value)
