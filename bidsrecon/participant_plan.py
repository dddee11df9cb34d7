"""What one participant's workflow is built from: its checked inputs (``ParticipantPlan``)."""
from dataclasses import dataclass, field
from pathlib import Path

from bidsrecon.bids.collect import Run
from bidsrecon.decoding.saved import SavedDecoder
from bidsrecon.spec import TRAINING


@dataclass
class RunInputs:
    """What the workflow reads for one run: raw data (realigned there) or fMRIPrep's outputs."""

    run: Run
    bold: str
    slice_timing: list = field(default_factory=list)
    slice_encoding_direction: str = "k"
    mask: str = None  # fMRIPrep's brain mask; None for raw input
    confounds: str = None  # fMRIPrep's confounds TSV; None for raw input (motion is estimated)
    confound_columns: tuple = ()
    censored_volumes: tuple = ()  # --confounds-strategy: volumes nilearn leaves out (0-based)


@dataclass
class ParticipantPlan:
    """One participant's checked inputs, ready for `init_participant_wf`."""

    subject: str
    runs: list  # of RunInputs, training first, then the test sets in the specification's order
    trials_files: list
    stimuli_file: str
    roi_files: list
    saved_decoder: SavedDecoder = None  # --decoders-dir: the decoder applied (then no training runs)
    normalise: str = "zscore"  # --normalise, resolved against the specification
    baseline_files: list = field(default_factory=list)  # normalise == "rest": per run, its rest events (TSV)
    fmriprep: bool = False  # the runs are fMRIPrep's preprocessed bold (--derivatives)
    simulated: bool = False  # the dataset was made by bidsrecon's simulator (it gets a noise ceiling)
    sources: list = field(default_factory=list)  # per run, the BIDS URI of the bold file read
    warnings: list = field(default_factory=list)  # logged while its inputs were checked (run_warnings rows)
    bdata_files: list = field(default_factory=list)  # --bdata-dir: the lab's files the samples come from
    samples_files: list = field(default_factory=list)  # --bdata-dir: per file, its samples (.npy), as trials_files
    mask_file: str = None  # --bdata-dir: the voxels' mask, placed by the files' voxel_x/y/z
    bdata_task: str = None  # --bdata-dir: the training runs' task, for the mask's BIDS name
    lab_decoders_file: str = None  # --bdata-dir --decoders-dir: the lab's decoder tree described (JSON)

    @property
    def input_mode(self):
        """``bdata``, ``fmriprep``, ``saved_reference`` (raw runs with a saved decoder) or ``raw``."""
        if self.bdata_files:
            return "bdata"
        if self.fmriprep:
            return "fmriprep"
        return "saved_reference" if self.saved_decoder else "raw"

    @property
    def reference_run(self):
        """Index of the run the mask (and, for raw input, the motion reference) comes from: the first
        training run, or the first run with a saved decoder (there are no training runs then); with
        BData input, of the first file in ``sources`` (the training file)."""
        if self.saved_decoder or self.bdata_files:
            return 0
        return next(index for index, inputs in enumerate(self.runs) if inputs.run.set_name == TRAINING)


def write_if_changed(path, text):
    """Write ``text`` to ``path`` unless it holds it already (parent folders created).

    Nipype reuses cached results when its inputs' timestamps are unchanged: an input table is
    rewritten only when its content changes.
    """
    path = Path(path)
    if path.is_file() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
