"""fMRIPrep's confounds table: the columns ``--confounds`` names, or nilearn's ``--confounds-strategy``.

:func:`select_confounds` reads the selected columns of a ``desc-confounds_timeseries.tsv``;
:func:`strategy_confounds` asks nilearn which columns and volumes a denoising strategy keeps.
"""
import fnmatch
import re
import warnings
from pathlib import Path

import pandas as pd

from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_INPUT_MISSING, BidsReconError
from bidsrecon.preproc.inputs import read_confounds
from bidsrecon.preproc.motion import MOTION_COLUMNS

#: nilearn's denoising strategies (``load_confounds_strategy``) that ``--confounds-strategy`` offers.
#: ``ica_aroma`` is left out: it reads ``desc-smoothAROMAnonaggr_bold`` files, which fMRIPrep >= 24
#: no longer writes.
CONFOUNDS_STRATEGIES = ("simple", "scrubbing", "compcor")


def strategy_confounds(bold_path, confounds_path, strategy):
    """The columns and censored volumes of nilearn's denoising ``strategy`` for one fMRIPrep run.

    nilearn's ``load_confounds_strategy`` finds the confounds table (and its JSON sidecar) next
    to ``bold_path`` by fMRIPrep's naming; its default parameters for the strategy are used.
    bidsrecon regresses out the columns nilearn selects, read from the table as with
    ``--confounds`` (``n/a`` as 0; nilearn's demeaning changes nothing, as a constant is
    regressed out too), and the volumes outside nilearn's sample mask are censored.

    Parameters
    ----------
    bold_path : str
        fMRIPrep's ``desc-preproc_bold`` file.
    confounds_path : str
        Its confounds table, as found by :func:`find_fmriprep_run` (named in messages; nilearn
        finds the same file by its own rules).
    strategy : str
        One of :data:`CONFOUNDS_STRATEGIES`.

    Returns
    -------
    columns : list of str
        In the table's order.
    censored : list of int
        0-based volumes outside nilearn's sample mask (non-steady-state volumes and, with
        ``scrubbing``, high-motion ones), ascending; empty when nilearn keeps every volume.

    Raises
    ------
    BidsReconError
        Exit 66 when ``compcor`` lacks the confounds' JSON sidecar; exit 64 when the table lacks
        what the strategy needs.
    """
    from nilearn.interfaces.fmriprep import load_confounds_strategy

    if strategy not in CONFOUNDS_STRATEGIES:
        raise BidsReconError(f"--confounds-strategy {strategy!r}: choose one of {', '.join(CONFOUNDS_STRATEGIES)}",
                             EXIT_BAD_ARGUMENTS)
    sidecar = Path(confounds_path).with_suffix(".json")
    if strategy == "compcor" and not sidecar.is_file():
        raise BidsReconError(
            f"{confounds_path}: --confounds-strategy compcor needs its JSON sidecar {sidecar.name}, which fMRIPrep "
            "writes next to it (it says which a_comp_cor columns come from the combined WM+CSF mask); copy it from "
            "fMRIPrep's output, or choose another strategy", EXIT_INPUT_MISSING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # nilearn's notices of changed defaults
            selected, sample_mask = load_confounds_strategy(str(bold_path), denoise_strategy=strategy)
    except ValueError as error:  # nilearn's message for a missing column or file
        raise BidsReconError(
            f"{confounds_path}: nilearn's '{strategy}' denoising strategy cannot use it ({' '.join(str(error).split())}); "
            "choose another --confounds-strategy, or name the columns with --confounds", EXIT_BAD_ARGUMENTS) from None
    available = table_columns(confounds_path)
    names = set(selected.columns) if selected is not None else set()
    unknown = sorted(names - set(available))
    if unknown:  # nilearn made columns of its own: they cannot be read from the table
        raise BidsReconError(f"{confounds_path}: nilearn's '{strategy}' strategy selects {', '.join(unknown)}, "
                             "which are not columns of the table; name the columns with --confounds",
                             EXIT_BAD_ARGUMENTS)
    n_volumes = len(pd.read_csv(confounds_path, sep="\t", usecols=[0]))
    censored = [] if sample_mask is None else sorted(set(range(n_volumes)) - {int(i) for i in sample_mask})
    return [column for column in available if column in names], censored


def table_columns(path):
    """The column names of a TSV table, read from its header only."""
    return list(pd.read_csv(path, sep="\t", nrows=0).columns)


def resolve_confound_columns(available, patterns=None, source="the confounds table"):
    """The columns that ``--confounds`` selects.

    Parameters
    ----------
    available : sequence of str
        The table's columns.
    patterns : sequence of str, optional
        Exact names or shell-style globs (``cosine*``, ``a_comp_cor_0[0-4]``). None selects
        the six motion parameters (:data:`bidsrecon.preproc.motion.MOTION_COLUMNS`); an empty sequence selects none.
    source : str
        Named in error messages (the table's path).

    Returns
    -------
    list of str
        Each selected column once, in the table's order.

    Raises
    ------
    BidsReconError
        Exit 64 when a pattern matches no column; the message summarises the available ones.
    """
    patterns = MOTION_COLUMNS if patterns is None else tuple(patterns)
    selected = set()
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern.strip():
            raise BidsReconError(f"--confounds: empty column name or pattern in {list(patterns)}", EXIT_BAD_ARGUMENTS)
        matches = [column for column in available if fnmatch.fnmatchcase(column, pattern)]
        if not matches:
            raise BidsReconError(
                f"--confounds {pattern!r} matches no column of {source}; its columns are: "
                f"{summarise_columns(available)}", EXIT_BAD_ARGUMENTS)
        selected.update(matches)
    return [column for column in available if column in selected]


def summarise_columns(columns):
    """Column names for a message, numbered runs collapsed: ``a_comp_cor_00..a_comp_cor_41 (42)``."""
    groups = []  # [prefix or None, first, last, count]
    for column in columns:
        numbered = re.fullmatch(r"(.*?)(\d+)", column)
        prefix = numbered.group(1) if numbered else None
        if prefix is not None and groups and groups[-1][0] == prefix:
            groups[-1][2] = column
            groups[-1][3] += 1
        else:
            groups.append([prefix, column, column, 1])
    return ", ".join(first if count == 1 else f"{first}..{last} ({count})" for _, first, last, count in groups)


def select_confounds(path, patterns=None):
    """Read the confound regressors that ``--confounds`` selects from an fMRIPrep table.

    Parameters
    ----------
    path : str or pathlib.Path
        A ``desc-confounds_timeseries.tsv``.
    patterns : sequence of str, optional
        As in :func:`resolve_confound_columns`; default the six motion parameters.

    Returns
    -------
    names : list of str
    values : ndarray, shape (n_volumes, len(names)), float64
        ``n/a`` read as 0: fMRIPrep writes it only where a difference-based regressor is
        undefined (the first row of ``framewise_displacement``, ``dvars`` and the
        ``*_derivative1`` columns), where "no change" is the natural value.

    Raises
    ------
    BidsReconError
        Exit 64 when a pattern matches no column or a selected column is not numeric.
    """
    # One reader of confound values for the whole app: the samples node uses it too.
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    names = resolve_confound_columns(list(table.columns), patterns, str(path))
    values = read_confounds(path, names, len(table))
    return names, values
