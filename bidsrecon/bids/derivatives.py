"""The output derivative dataset: its description, names, and writes that never leave half a file."""
import contextlib
import json
import os
import re
import tempfile
from pathlib import Path

from bidsrecon import __version__

CODE_URL = "https://github.com/bidsrecon/bidsrecon"

# What BIDS cannot name, and only that, is hidden from the validator: reconstructions and stimuli
# (recon/), decoders (decoder/), quality traces and maps (qc/), run records (log/, logs/), figures,
# group tables and reports. The decoder's mask in func/ is BIDS and is validated.
# bids-validator-deno 3 needs folder patterns without a trailing slash (REFERENCE.md §6).
BIDSIGNORE = """\
recon
decoder
qc
log
logs
figures
group
*.html
*_metrics.tsv
*_metrics.json
"""

README = """\
# bidsrecon derivatives

Images reconstructed from brain activity by bidsrecon (deep image reconstruction, Shen et al. 2019,
PLoS Comput Biol 15(1): e1006633). Per participant: `recon/` holds each reconstruction
(`sub-<label>_acq-<test set>_desc-<stimulus>_recon.png`, with a JSON sidecar naming its trials,
encoder, layers and settings) next to the presented stimulus at the same size (`..._stimulus.png`);
`*_desc-sets_metrics.tsv` scores each test set, `*_desc-items_metrics.tsv` each item (its `set` and
`stimulus` columns name the files); `func/` holds the decoder's voxel mask; `decoder/` the fitted
decoder; `qc/` head motion, a tSNR map and a carpet plot; `log/` the command, times, settings and
software versions; `sub-<label>.html` is the participant's report. `group/`, `figures/` and the
group report come from the group level.
"""


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` through a temporary file and a rename.

    A reader (or a parallel participant job) sees the old file or the new one, never half of one,
    and an interrupted run leaves no truncated output behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path, content):
    atomic_write_text(path, json.dumps(content, indent=2, sort_keys=False) + "\n")


def dataset_description(source_dir, derivatives=()):
    """``dataset_description.json`` of the output (REFERENCE.md §6).

    ``derivatives``: ``(name, root)`` of each ``--derivatives`` dataset read (fMRIPrep's): it is a
    source dataset too, and sidecars name its files as ``bids:<name>:<path>``.
    """
    roots = {"raw": Path(source_dir).resolve(), **{name: Path(root).resolve() for name, root in derivatives}}
    return {
        "Name": "bidsrecon: reconstructed images",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "bidsrecon", "Version": __version__, "CodeURL": CODE_URL}],
        "SourceDatasets": [{"URL": root.as_uri()} for root in roots.values()],
        # Sidecars name their source files as bids:raw:<path> (and bids:<name>:<path>) URIs.
        "DatasetLinks": {name: root.as_uri() for name, root in roots.items()},
    }


def init_output_dir(output_dir, source_dir, derivatives=()):
    """Make ``output_dir`` a derivative dataset; safe when parallel jobs do it at once."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / "dataset_description.json", dataset_description(source_dir, derivatives))
    atomic_write_text(output_dir / ".bidsignore", BIDSIGNORE)
    atomic_write_text(output_dir / "README.md", README)


def entity_label(value):
    """A BIDS label from free text: letters and digits only (``red_+`` -> ``redplus``)."""
    return re.sub(r"[^A-Za-z0-9]", "", str(value).replace("+", "plus"))


def item_stem(subject, set_name, stimulus, iteration=None):
    """Stem of an item's files, in entities BIDS has: ``sub-01_acq-natural_desc-n0241651912793``.

    BIDS has no entity for a test set or a stimulus. The test set is the acquisition the item's
    trials come from (``acq-``), the stimulus the free-form label that tells derivatives of one kind
    apart (``desc-``), so that pybids can query each reconstruction and keeps each sidecar with its
    image; ``chunk-`` numbers the iteration of a snapshot.
    """
    chunk = "" if iteration is None else f"_chunk-{int(iteration)}"
    return f"sub-{subject}_acq-{entity_label(set_name)}{chunk}_desc-{entity_label(stimulus)}"


def item_files(subject_dir, subject, set_name, stimulus):
    """Where an item's reconstruction (PNG and sidecar) and stimulus at the same size (PNG) go."""
    folder, stem = Path(subject_dir) / "recon", item_stem(subject, set_name, stimulus)
    return {"recon": folder / f"{stem}_recon.png", "sidecar": folder / f"{stem}_recon.json",
            "stimulus": folder / f"{stem}_stimulus.png"}


# Names of the other per-participant files (every one with a suffix, so that pybids can query it).
SET_METRICS = "sub-{subject}_desc-sets_metrics"  # + .tsv / .json
ITEM_METRICS = "sub-{subject}_desc-items_metrics"
DECODING_METRICS = "sub-{subject}_desc-decoding_metrics"
PROVENANCE_FILE = "sub-{subject}_desc-provenance_log.json"
SETTINGS_FILE = "sub-{subject}_desc-settings_log.toml"
FIGURE_FILE = "sub-{subject}_desc-reconstructions_figure.png"


def set_metrics_file(output_dir, subject):
    """``sub-XX/sub-XX_desc-sets_metrics.tsv``: the participant's score per test set."""
    return Path(output_dir) / f"sub-{subject}" / (SET_METRICS.format(subject=subject) + ".tsv")


def raw_uri(bids_dir, path):
    """BIDS URI of a file of the input dataset: ``bids:raw:sub-01/...``."""
    return dataset_uri("raw", bids_dir, path)


def dataset_uri(name, root, path):
    """BIDS URI of a file of the dataset linked as ``name``: ``bids:<name>:sub-01/...``."""
    return f"bids:{name}:{Path(path).resolve().relative_to(Path(root).resolve()).as_posix()}"


def decoder_mask_name(subject, reference_bold, space_file=None):
    """BIDS name of the decoder's voxel mask in ``func/``, in the reference run's grid.

    ``sub-01_task-perception_desc-decoder_mask.nii.gz`` for raw input (no ``space-``: the run's
    own space); with fMRIPrep input the ``space-``, ``cohort-`` and ``res-`` of ``space_file`` (its
    brain mask), e.g. ``sub-01_task-perception_space-T1w_desc-decoder_mask.nii.gz``.
    """
    task = "".join(re.findall(r"_task-[A-Za-z0-9]+", Path(reference_bold).name)[:1])
    space = "".join(re.findall(r"_(?:space|cohort|res)-[A-Za-z0-9]+", Path(space_file).name)) if space_file else ""
    return f"sub-{subject}{task}{space}_desc-decoder_mask.nii.gz"


def bdata_mask_name(subject, task):
    """BIDS name of the decoder's voxel mask for ``--bdata-dir`` input, in the lab's files' space.

    ``sub-01_task-perception_space-bdata_desc-decoder_mask.nii.gz``: the voxels where the files'
    voxel_x/y/z place them; ``space-bdata`` says the space is the files' own (``DatasetLinks`` name
    the folder ``bdata``), ``task`` is the training runs' task.
    """
    return f"sub-{subject}_task-{task}_space-bdata_desc-decoder_mask.nii.gz"


# A participant's outputs are written here first and moved into place as a whole when the run ends:
# a failed run leaves the last complete outputs untouched, and a rerun that drops a test set leaves
# no file of it behind. Inside the output dataset, so that the move is a rename on one file system;
# a hidden folder, which the BIDS validator skips.
STAGING = ".bidsrecon-staging"
# Where each step of a participant's workflow ran, written by the workflow's sink into log/ and
# folded into the provenance record by the participant level.
DEVICES_FILE = "sub-{subject}_desc-devices_log.json"
# The warnings of a participant's run, in its log/ folder (bidsrecon.run_warnings), for its report.
WARNINGS_LOG = "sub-{subject}_desc-warnings_log.tsv"


def staging_dir(output_dir):
    """Where a run writes its participants' outputs before `publish_participant` moves them."""
    return Path(output_dir) / STAGING


def publish_participant(output_dir, subject):
    """Replace ``output_dir/sub-<subject>`` by its staged version in two renames.

    The previous outputs are renamed aside first and removed last, so that at every moment one
    complete version exists: a run killed in between leaves them in the staging folder, and the
    next run's publish clears them.
    """
    import shutil

    staged, final = staging_dir(output_dir) / f"sub-{subject}", Path(output_dir) / f"sub-{subject}"
    previous = staging_dir(output_dir) / f"sub-{subject}.previous"
    if previous.exists():
        shutil.rmtree(previous)
    if final.exists():
        os.rename(final, previous)
    os.rename(staged, final)
    shutil.rmtree(previous, ignore_errors=True)
    with contextlib.suppress(OSError):  # other participants may still be staged by parallel jobs
        staging_dir(output_dir).rmdir()
