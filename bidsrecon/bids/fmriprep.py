"""fMRIPrep derivatives as input: ``--derivatives``, ``--space``, ``--confounds`` and ``--confounds-strategy``.

For each raw run, the preprocessed bold in the chosen output space, its brain mask and its
confounds table are looked up with pybids in the derivative folders the user names (modern
fMRIPrep names, REFERENCE.md §6)::

    sub-X[_ses-Y]_task-T[_acq-A][_run-R]_space-S[_cohort-C][_res-N]_desc-preproc_bold.nii.gz
    sub-X[_ses-Y]_task-T[_acq-A][_run-R]_space-S[_cohort-C][_res-N]_desc-brain_mask.nii.gz
    sub-X[_ses-Y]_task-T[_acq-A][_run-R]_desc-confounds_timeseries.tsv (+ .json)

fMRIPrep 1.2-20.1 named the table ``desc-confounds_regressors.tsv``; it is accepted too. For a
multi-echo run the optimally combined bold (no ``echo-`` entity) is read; the per-echo files
that ``--me-output-echos`` adds are not.
"""
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bidsrecon.bids.collect import bold_volumes
from bidsrecon.bids.confounds import resolve_confound_columns, strategy_confounds, table_columns
from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_INPUT_MISSING, BidsReconError
from bidsrecon.names import is_label

DEFAULT_SPACE = "T1w"
# pybids entity names that tell two raw runs of a subject apart, with their filename keys,
# in the order BIDS writes them.
RUN_ENTITIES = {
    "subject": "sub", "session": "ses", "task": "task", "acquisition": "acq", "ceagent": "ce",
    "reconstruction": "rec", "direction": "dir", "run": "run",
}
_BOLD_EXTENSIONS = (".nii.gz", ".nii")
_CONFOUNDS_SUFFIXES = ("timeseries", "regressors")
# pybids 0.22 does not know fMRIPrep's cohort- entity (templates such as MNIPediatricAsym:cohort-1).
_COHORT_CONFIG = {"name": "bidsrecon_cohort",
                  "entities": [{"name": "cohort", "pattern": "[_/\\\\]+cohort-([a-zA-Z0-9]+)"}]}


@dataclass(frozen=True)
class DerivativeDataset:
    """One folder given to ``--derivatives``.

    Attributes
    ----------
    name : str
        The ``NAME`` of ``NAME=PATH``, else the pipeline named in its dataset_description.json.
    root : pathlib.Path
        Absolute path of the folder.
    """

    name: str
    root: Path


@dataclass(frozen=True)
class OutputSpace:
    """An output space as fMRIPrep's ``--output-spaces`` spells it: ``SPACE[:cohort-N][:res-N]``.

    Attributes
    ----------
    name : str
        ``T1w``, ``MNI152NLin2009cAsym``, ``MNIPediatricAsym``, …
    resolution : str or None
        The ``res-`` label; None accepts the only resolution present.
    cohort : str or None
        The ``cohort-`` label of templates with cohorts (``MNIPediatricAsym:cohort-1``); None
        accepts the only cohort present.
    """

    name: str
    resolution: str = None
    cohort: str = None

    def __str__(self):
        return "".join([self.name, f":cohort-{self.cohort}" if self.cohort is not None else "",
                        f":res-{self.resolution}" if self.resolution is not None else ""])


@dataclass(frozen=True)
class FmriprepRun:
    """What the samples node needs from fMRIPrep for one raw run.

    Attributes
    ----------
    bold : str
        Preprocessed 4-D bold (``desc-preproc_bold``) in the chosen space.
    mask : str
        Its brain mask (``desc-brain_mask``, same space and resolution).
    confounds : str
        Its confounds table (``desc-confounds_timeseries.tsv``).
    confound_columns : tuple of str
        The columns that ``--confounds`` (or nilearn's ``--confounds-strategy``) selects in that
        table, in table order.
    n_volumes : int
        Volumes of the preprocessed bold (equal to the confounds' rows).
    space : str
        The space found, written ``SPACE[:res-N]``.
    derivatives : str
        Root of the derivative folder that held the three files.
    confounds_strategy : str or None
        The ``--confounds-strategy`` that chose ``confound_columns``; None for ``--confounds``.
    censored_volumes : tuple of int
        Volumes (0-based) that the strategy leaves out: those outside nilearn's sample mask
        (non-steady-state volumes, and with ``scrubbing`` the high-motion ones). Empty otherwise.
    """

    bold: str
    mask: str
    confounds: str
    confound_columns: tuple
    n_volumes: int
    space: str
    derivatives: str
    confounds_strategy: str = None
    censored_volumes: tuple = ()


def parse_derivatives(values):
    """Check the values of ``--derivatives``: ``NAME=PATH`` or a bare ``PATH``, several allowed.

    Parameters
    ----------
    values : iterable of str

    Returns
    -------
    list of DerivativeDataset
        In the order given (the order in which they are searched).

    Raises
    ------
    BidsReconError
        Exit 64 for a malformed value or a name given twice; exit 66 for a folder that does
        not exist or has no dataset_description.json.
    """
    datasets = []
    for value in values:
        name, separator, path = value.partition("=")
        if not separator:
            name, path = "", value
        elif not name.strip() or not path.strip():
            raise BidsReconError(
                f"--derivatives {value!r}: expected NAME=PATH (e.g. fmriprep=/data/derivatives/fmriprep) "
                "or a bare PATH", EXIT_BAD_ARGUMENTS)
        root = Path(path.strip()).expanduser().resolve()
        description = root / "dataset_description.json"
        if not description.is_file():
            raise BidsReconError(
                f"--derivatives {value!r}: {root} is not a BIDS derivative dataset "
                f"({'it has no dataset_description.json' if root.is_dir() else 'no such folder'})",
                EXIT_INPUT_MISSING)
        datasets.append(DerivativeDataset(name.strip() or _pipeline_name(description), root))
    names = [dataset.name for dataset in datasets]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise BidsReconError(
            f"--derivatives: the name(s) {', '.join(repeated)} are given to several folders; "
            "name each folder once (NAME=PATH)", EXIT_BAD_ARGUMENTS)
    return datasets


def _pipeline_name(description_file):
    # A bare path is named after the pipeline that made it, as BIDS asks derivative folders to be.
    try:
        description = json.loads(description_file.read_text())
        return str(description["GeneratedBy"][0]["Name"]).lower()
    except (OSError, ValueError, KeyError, IndexError, TypeError, RecursionError):
        return description_file.parent.name


def parse_space(value=DEFAULT_SPACE):
    """Check a ``--space`` value: ``SPACE[:cohort-N][:res-N]`` (fMRIPrep's ``--output-spaces`` syntax).

    Parameters
    ----------
    value : str
        E.g. ``T1w``, ``MNI152NLin2009cAsym``, ``MNI152NLin2009cAsym:res-2``,
        ``MNIPediatricAsym:cohort-1:res-2`` (the modifiers in either order, each at most once).

    Returns
    -------
    OutputSpace

    Raises
    ------
    BidsReconError
        Exit 64 when the value is not of that form.
    """
    name, *modifiers = value.split(":")
    labels = {}
    for modifier in modifiers:
        key, _, label = modifier.partition("-")
        if key not in ("res", "cohort") or key in labels or not is_label(label):
            labels = None
            break
        labels[key] = label
    if not is_label(name) or labels is None:
        raise BidsReconError(
            f"--space {value!r}: expected SPACE, SPACE:res-N or SPACE:cohort-N:res-N with alphanumeric labels, "
            "e.g. T1w, MNI152NLin2009cAsym:res-2 or MNIPediatricAsym:cohort-1:res-2", EXIT_BAD_ARGUMENTS)
    return OutputSpace(name, labels.get("res"), labels.get("cohort"))


def index_derivatives(datasets):
    """Index each derivative folder with pybids (one layout per folder, not validated).

    Parameters
    ----------
    datasets : list of DerivativeDataset

    Returns
    -------
    list of (DerivativeDataset, bids.BIDSLayout)
    """
    from bids import BIDSLayout

    return [(dataset, BIDSLayout(str(dataset.root), validate=False, is_derivative=True,
                                 config=["bids", "derivatives", _COHORT_CONFIG]))
            for dataset in datasets]


def raw_run_entities(bold_path):
    """The entities of a raw bold file that identify its run (see :data:`RUN_ENTITIES`).

    Parameters
    ----------
    bold_path : str or pathlib.Path

    Returns
    -------
    dict of str to str
        Only the entities present in the name; ``run`` keeps its zero padding.
    """
    from bids.layout import parse_file_entities

    entities = parse_file_entities(str(bold_path))
    return {key: str(entities[key]) for key in RUN_ENTITIES if entities.get(key) not in (None, "")}


def find_fmriprep_run(indexed, entities, space=None, confounds=None, strategy=None):
    """Locate the preprocessed bold, brain mask and confounds of one raw run.

    The folders are searched in order; the first one holding the run's preprocessed bold in
    ``space`` must also hold its mask and confounds, so that the three files come from one
    fMRIPrep run. Of a multi-echo run, the optimally combined bold (no ``echo-`` entity) is
    taken.

    Parameters
    ----------
    indexed : list of (DerivativeDataset, bids.BIDSLayout)
        From :func:`index_derivatives`.
    entities : mapping
        The raw run's entities (:func:`raw_run_entities`): ``subject``, ``task`` and, when the
        run has them, ``session``, ``acquisition``, ``run``, … An entity that is missing or
        empty must be missing from the derivative's name too.
    space : OutputSpace or str, optional
        Default ``T1w``; a string is read with :func:`parse_space`.
    confounds : sequence of str, optional
        Column names or glob patterns for :func:`resolve_confound_columns`; default the six
        motion parameters.
    strategy : str, optional
        One of :data:`bidsrecon.bids.confounds.CONFOUNDS_STRATEGIES`: the columns (and censored volumes) are those
        nilearn's ``load_confounds_strategy`` selects (:func:`strategy_confounds`). Not with
        ``confounds``.

    Returns
    -------
    FmriprepRun

    Raises
    ------
    BidsReconError
        Exit 66 naming the run and the file pattern looked for when a file is missing, or when
        only the per-echo bold files of a multi-echo run are there; exit 64 when a pattern
        matches several files (e.g. two resolutions: give ``SPACE:res-N``) or a confounds
        pattern matches no column; exit 64 when the confounds' rows differ from the bold's
        volumes, or when the strategy does not fit the confounds table.
    """
    if not indexed:
        raise ValueError("no derivative folders to search; give --derivatives")
    if strategy is not None and confounds is not None:
        raise BidsReconError("give --confounds or --confounds-strategy, not both: the strategy chooses the "
                             "columns itself", EXIT_BAD_ARGUMENTS)
    space = parse_space(space) if isinstance(space, str) else (space or OutputSpace(DEFAULT_SPACE))
    run = {key: value for key, value in entities.items() if key in RUN_ENTITIES and value not in (None, "")}
    for key in ("subject", "task"):
        if key not in run:
            raise ValueError(f"the run's entities must include {key!r}; got {dict(entities)}")
    run_label = _run_label(run)

    bold_query = {"space": space.name, "desc": "preproc", "suffix": "bold", "extension": list(_BOLD_EXTENSIONS)}
    if space.resolution is not None:
        bold_query["res"] = space.resolution
    if space.cohort is not None:
        bold_query["cohort"] = space.cohort
    for dataset, layout in indexed:
        bold = _unique(layout, run, bold_query, run_label)
        if bold is not None:
            break
        _refuse_echoes_only(dataset, layout, run, bold_query, run_label)
    else:
        roots = ", ".join(str(dataset.root) for dataset, _ in indexed)
        raise BidsReconError(
            f"no preprocessed bold in space {space} for run {run_label}: looked for "
            f"{_pattern(run, bold_query)} in {roots}", EXIT_INPUT_MISSING)

    # The mask takes the space and resolution of the bold actually found.
    found = bold.get_entities()
    mask_query = {"space": space.name, "res": found.get("res", _none()), "cohort": found.get("cohort", _none()),
                  "desc": "brain", "suffix": "mask", "extension": list(_BOLD_EXTENSIONS)}
    confounds_query = {"space": _none(), "cohort": _none(), "desc": "confounds",
                       "suffix": list(_CONFOUNDS_SUFFIXES), "extension": ".tsv"}
    files = {}
    for kind, query in (("brain mask", mask_query), ("confounds", confounds_query)):
        files[kind] = _unique(layout, run, query, run_label)
        if files[kind] is None:
            raise BidsReconError(
                f"{dataset.name} ({dataset.root}) has the preprocessed bold of run {run_label} but not its "
                f"{kind}: looked for {_pattern(run, query)}", EXIT_INPUT_MISSING)

    confounds_path = files["confounds"].path
    n_volumes = bold_volumes(bold.path)
    n_rows = len(pd.read_csv(confounds_path, sep="\t", usecols=[0]))
    if n_rows != n_volumes:
        raise BidsReconError(
            f"{confounds_path} has {n_rows} rows but {bold.path} has {n_volumes} volumes; "
            "they must come from the same fMRIPrep run")
    censored = ()
    if strategy is None:
        columns = resolve_confound_columns(table_columns(confounds_path), confounds, confounds_path)
    else:
        columns, censored = strategy_confounds(bold.path, confounds_path, strategy)
    resolution, cohort = found.get("res"), found.get("cohort")
    return FmriprepRun(
        bold=bold.path,
        mask=files["brain mask"].path,
        confounds=confounds_path,
        confound_columns=tuple(columns),
        n_volumes=n_volumes,
        space=str(OutputSpace(space.name, None if resolution is None else str(resolution),
                              None if cohort is None else str(cohort))),
        derivatives=str(dataset.root),
        confounds_strategy=strategy,
        censored_volumes=tuple(censored),
    )


def _none():
    from bids.layout import Query

    return Query.NONE


def _query_entities(run):
    # Entities a run lacks must be absent from the derivative too; run labels are matched as numbers.
    query = {key: _none() for key in (*RUN_ENTITIES, "echo")}
    query.update({key: int(value) if key == "run" else value for key, value in run.items()})
    return query


def _unique(layout, run, query, run_label):
    matches = layout.get(**{**_query_entities(run), **query})
    if len(matches) > 1:
        names = ", ".join(sorted(Path(match.path).name for match in matches))
        raise BidsReconError(
            f"run {run_label} matches several files in {layout.root}: {names}; choose one "
            "(for several resolutions or cohorts, give --space SPACE:res-N or SPACE:cohort-N:res-N)",
            EXIT_BAD_ARGUMENTS)
    return matches[0] if matches else None


def _refuse_echoes_only(dataset, layout, run, bold_query, run_label):
    """Stop when a folder holds a multi-echo run's per-echo bold files but not the combined one."""
    from bids.layout import Query

    echoes = layout.get(**{**_query_entities(run), **bold_query, "echo": Query.ANY})
    if echoes:
        names = ", ".join(sorted(Path(echo.path).name for echo in echoes))
        raise BidsReconError(
            f"{dataset.name} ({dataset.root}) holds only per-echo preprocessed bold files of run {run_label} "
            f"({names}); bidsrecon reads fMRIPrep's optimally combined run, {_pattern(run, bold_query)}, which "
            "fMRIPrep writes for every multi-echo run: copy it next to them", EXIT_INPUT_MISSING)


def _run_label(run):
    return "_".join(f"{RUN_ENTITIES[key]}-{run[key]}" for key in RUN_ENTITIES if key in run)


def _pattern(run, query):
    """The file name a query looks for, with ``[...]`` for what may vary."""
    folder = f"sub-{run['subject']}/" + (f"ses-{run['session']}/" if "session" in run else "") + "func/"
    parts = [_run_label(run)]
    for entity in ("space", "cohort", "res", "desc"):
        value = query.get(entity)
        if isinstance(value, str):
            parts.append(f"{entity}-{value}")
        elif entity == "res" and "res" not in query and isinstance(query.get("space"), str):
            parts[-1] += "[_res-*]"
    suffixes = query["suffix"] if isinstance(query["suffix"], list) else [query["suffix"]]
    extensions = query["extension"] if isinstance(query["extension"], list) else [query["extension"]]
    suffix = suffixes[0] if len(suffixes) == 1 else "{" + ",".join(suffixes) + "}"
    extension = extensions[0] if len(extensions) == 1 else "{" + ",".join(extensions) + "}"
    return folder + "_".join(parts) + f"_{suffix}{extension}"
