"""fMRIPrep's workflow-control options of the participant level: ``--reports-only``,
``--clean-workdir``, ``--dry-run`` and ``--write-graph``; and the version stamp of the work dir's
cached results."""
import logging
import shutil
from pathlib import Path

import pandas as pd

from bidsrecon._version import cached_results_version
from bidsrecon.bids.derivatives import atomic_write_text, set_metrics_file
from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_INPUT_MISSING, BidsReconError
from bidsrecon.reports import write_participant_report
from bidsrecon.spec import TRAINING

LOGGER = logging.getLogger("bidsrecon")


def write_reports_only(output_dir, labels):
    """``--reports-only``: every selected participant's report again, from its outputs in ``output_dir``."""
    output_dir = Path(output_dir)
    labels = [label.removeprefix("sub-") for label in labels] or sorted(
        path.name.removeprefix("sub-") for path in output_dir.glob("sub-*") if path.is_dir())
    missing = [label for label in labels
               if not set_metrics_file(output_dir, label).is_file()]
    if not labels or missing:
        raise BidsReconError(
            f"--reports-only: {output_dir} holds no outputs of "
            f"{', '.join(f'sub-{label}' for label in missing) if missing else 'any participant'}; run the "
            "participant level without --reports-only first", EXIT_INPUT_MISSING)
    for label in labels:
        path = write_participant_report(output_dir, label)
        print(f"sub-{label}: report written to {path}")


def clean_work_dir(work_dir, subjects):
    """``--clean-workdir``: the participants' cached results, removed before their run starts.

    Only theirs (their workflow folder and input tables): the feature cache and other
    participants' results, which a parallel job may be using, stay.
    """
    for subject in subjects:
        for folder in (Path(work_dir) / f"sub_{subject}_wf", Path(work_dir) / f"sub-{subject}"):
            if folder.is_dir():
                LOGGER.warning("--clean-workdir: removing %s", folder)
                shutil.rmtree(folder)


#: In each participant's workflow folder of the work dir: the version whose results it caches.
VERSION_STAMP = "bidsrecon_version.txt"


def check_work_version(work_dir, subjects):
    """Refuse to reuse a participant's cached results that another bidsrecon version wrote.

    Nipype reuses a step's cached result whenever the step's inputs are unchanged, whatever code
    computed it: after an upgrade, a rerun in the same work dir would take the old version's
    decoded features or images as this version's, without a word. A folder that holds results but
    no stamp was written before stamps were. In a source checkout the stamp holds a hash of the
    source too (:func:`bidsrecon._version.cached_results_version`), so an edit counts as a new version.
    """
    version = cached_results_version()
    for subject in subjects:
        folder = Path(work_dir) / f"sub_{subject}_wf"
        if not folder.is_dir() or not any(folder.iterdir()):
            continue
        stamp = folder / VERSION_STAMP
        found = stamp.read_text().strip() if stamp.is_file() else None
        if found != version:
            raise BidsReconError(
                f"{folder} holds results cached by {'bidsrecon ' + found if found else 'an earlier bidsrecon'}, "
                f"and this is bidsrecon {version}, whose steps may compute them differently; rerun with "
                "--clean-workdir (it removes this participant's cached results) or give a new --work-dir",
                EXIT_BAD_ARGUMENTS)


def prepare_cached_results(work_dir, subjects, clean):
    """Before the participants' runs: their cached results removed (``clean``, ``--clean-workdir``),
    and what remains checked to be this version's."""
    if clean:
        clean_work_dir(work_dir, subjects)
    check_work_version(work_dir, subjects)


def stamp_work_version(work_dir, subject):
    """Mark the participant's workflow folder as caching this version's results."""
    folder = Path(work_dir) / f"sub_{subject}_wf"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / VERSION_STAMP, cached_results_version() + "\n")


def describe_plans(plans, config):
    """``--dry-run``: what the run would do, per participant and set, as text."""
    lines = []
    for plan in plans:
        trials = pd.concat([pd.read_csv(path, sep="\t") for path in plan.trials_files], ignore_index=True)
        mode = {"raw": "raw runs, realigned here", "fmriprep": "fMRIPrep's preprocessed runs",
                "saved_reference": "raw runs, realigned to the saved decoder's reference",
                "bdata": f"the lab's preprocessed samples in {len(plan.bdata_files)} BData files"}[plan.input_mode]
        decoder = f"apply {plan.saved_decoder.sidecar_file}" if plan.saved_decoder else f"fit ({config.decoder})"
        if plan.lab_decoders_file:
            decoder = f"apply the Kamitani lab's decoders in {config.decoders_dir}"
        lines.append(f"sub-{plan.subject}: {len(plan.runs)} runs ({mode}); decoder: {decoder}; "
                     f"encoder {config.encoder} at {config.image_size} px, {config.optimiser} "
                     f"{config.iterations} iterations")
        n_items = 0
        for set_name, rows in trials.groupby("set", sort=False):
            runs = (rows["run"].nunique() if plan.input_mode == "bdata"
                    else sum(inputs.run.set_name == set_name for inputs in plan.runs))
            items = rows["stimulus"].nunique()
            what = "training images" if set_name == TRAINING else "items to reconstruct"
            n_items += 0 if set_name == TRAINING else items
            lines.append(f"  {set_name}: {runs} runs, {len(rows)} trials, {items} {what}")
        lines.append(f"  outputs: {n_items} reconstructions (PNG and JSON each, with the stimulus at their size), "
                     f"metrics, the decoder and the report in {config.output_dir / f'sub-{plan.subject}'}")
    lines.append("dry run: every input was checked; nothing was written to the output")
    return "\n".join(lines)


def write_graph(workflow, folder):
    """The workflow's graph as Graphviz .dot (and .svg when Graphviz's ``dot`` is installed)."""
    from nipype.pipeline.engine.utils import format_dot

    folder.mkdir(parents=True, exist_ok=True)
    dot_file = folder / "graph.dot"
    workflow.write_hierarchical_dotfile(dotfilename=str(dot_file), colored=True, simple_form=True)
    if shutil.which("dot"):
        LOGGER.warning("--write-graph: %s", format_dot(str(dot_file), format="svg"))
    else:
        LOGGER.warning("--write-graph: %s (install Graphviz to draw it: dot -Tsvg graph.dot)", dot_file)
