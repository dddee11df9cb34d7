"""The output derivative dataset: its description, names, and writes that never leave half a file."""
import contextlib
import json
import os
import re
import tempfile
from pathlib import Path

from bidsrecon import __version__

CODE_URL = "https://github.com/bidsrecon/bidsrecon"

# BIDS defines no files for reconstructions, decoders or metrics: the validator is told to skip them.
# bids-validator-deno 3 needs folder patterns without a trailing slash (REFERENCE.md §6).
BIDSIGNORE = """\
logs
recon
decoder
qc
log
figures
group
*.html
*metrics.tsv
*metrics.json
"""

README = """\
# bidsrecon derivatives

Images reconstructed from brain activity by bidsrecon (deep image reconstruction, Shen et al. 2019,
PLoS Comput Biol 15(1): e1006633). Per participant: `recon/` holds each reconstruction
(`*_desc-recon_image.png`, with a JSON sidecar naming its trials, encoder, layers and settings) next
to the presented stimulus at the same size (`*_desc-stimulus_image.png`); `*_desc-metrics.tsv` scores
each test set; `decoder/` describes the fitted decoder; `qc/` holds head motion and a tSNR map; `log/`
the command, times and software versions; `sub-<label>.html` is the participant's report. `group/`,
`figures/` and the group report come from the group level.
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


def dataset_description(source_dir):
    """``dataset_description.json`` of the output (REFERENCE.md §6)."""
    return {
        "Name": "bidsrecon: reconstructed images",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "bidsrecon", "Version": __version__, "CodeURL": CODE_URL}],
        "SourceDatasets": [{"URL": Path(source_dir).resolve().as_uri()}],
        # Sidecars name their source runs as bids:raw:<path> URIs.
        "DatasetLinks": {"raw": Path(source_dir).resolve().as_uri()},
    }


def init_output_dir(output_dir, source_dir):
    """Make ``output_dir`` a derivative dataset; safe when parallel jobs do it at once."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / "dataset_description.json", dataset_description(source_dir))
    atomic_write_text(output_dir / ".bidsignore", BIDSIGNORE)
    atomic_write_text(output_dir / "README.md", README)


def entity_label(value):
    """A BIDS label from free text: letters and digits only (``red_+`` -> ``redplus``)."""
    return re.sub(r"[^A-Za-z0-9]", "", str(value).replace("+", "plus"))


def item_stem(subject, set_name, stimulus):
    """Stem of an item's files: ``sub-01_set-natural_stim-n0241651912793``."""
    return f"sub-{subject}_set-{entity_label(set_name)}_stim-{entity_label(stimulus)}"


def raw_uri(bids_dir, path):
    """BIDS URI of a file of the input dataset: ``bids:raw:sub-01/...``."""
    return f"bids:raw:{Path(path).resolve().relative_to(Path(bids_dir).resolve()).as_posix()}"


# A participant's outputs are written here first and moved into place as a whole when the run ends:
# a failed run leaves the last complete outputs untouched, and a rerun that drops a test set leaves
# no file of it behind. Inside the output dataset, so that the move is a rename on one file system;
# a hidden folder, which the BIDS validator skips.
STAGING = ".bidsrecon-staging"
# Where each step of a participant's workflow ran, written by the workflow's sink into log/ and
# folded into the provenance record by the participant level.
DEVICES_FILE = "sub-{subject}_desc-devices.json"
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
