"""Find the image file of each stimulus, without ever reading outside the stimulus folders.

Two ways to name a stimulus's file:

- a ``stim_file`` column in events.tsv (BIDS): the path relative to the dataset's ``stimuli/``
  folder; with ``--stimuli-dir`` the given folders stand in for ``stimuli/`` (first hit wins);
- otherwise by name: stimulus ``n01518878_5958`` is the file ``n01518878_5958.<ext>`` anywhere
  under one of the folders (the first folder that has it wins), any of :data:`IMAGE_SUFFIXES`.

A ``stim_file`` or name that is absolute, climbs with ``..``, or leads (through a symbolic link)
outside its folder is refused, with one exception: files managed by git-annex or DataLad are
symbolic links into the dataset's ``.git/annex/objects``. A link is followed when it resolves
inside the ``.git/annex/objects`` of the git repository the folder belongs to (the nearest folder
at or above it that has a ``.git`` folder, not a link); a link into another repository's annex, or
anywhere else, is still refused. An annexed file whose content has not been fetched (a broken link
into the annex, or an unlocked file that holds only git-annex's pointer) stops the run naming the
file, with the ``datalad get``/``git annex get`` command that fetches it. ``.git`` folders are not
searched for stimuli.
"""
import os
import shlex
from pathlib import Path, PurePosixPath, PureWindowsPath

from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_INPUT_MISSING, BidsReconError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
# An unlocked git-annex file whose content is absent holds this pointer instead of the image.
ANNEX_POINTER_PREFIX = b"/annex/objects/"
_ANNEX_POINTER_MAX_BYTES = 1024


def find_stimuli(names, search_dirs, stim_files=None):
    """Map each stimulus name to its image file.

    Parameters
    ----------
    names : iterable of str
        Stimulus names (the specification's stimulus column).
    search_dirs : sequence of path-like
        The dataset's ``stimuli/`` folder or the ``--stimuli-dir`` folders, in order.
    stim_files : dict of str to str, optional
        Name → ``stim_file`` relative to the folder (see :func:`stim_file_map`); other names are
        looked up by file stem.

    Returns
    -------
    dict of str to str
        Name → path of the image, inside one of ``search_dirs``.

    Raises
    ------
    BidsReconError
        Exit 64 naming every stimulus whose name or ``stim_file`` would reach outside its folder,
        or whose name matches several files in one folder; else exit 66 naming every annexed
        stimulus whose content has not been fetched, else every stimulus that is not found.
    """
    names = list(dict.fromkeys(names))
    stim_files = stim_files or {}
    folders = [Path(folder) for folder in search_dirs]
    annexes = {folder: _annex_objects(folder) for folder in folders}
    found, missing, escaping, ambiguous, unfetched = {}, [], [], [], []
    by_name = [name for name in names if name not in stim_files]
    unsafe_names = [name for name in by_name if not _is_plain_name(name)]
    escaping += [f"stimulus name {name!r}" for name in unsafe_names]
    index = _index_by_stem(folders) if by_name else {}
    for name in names:
        if name in unsafe_names:
            continue
        if name in stim_files:
            path, problem = _locate_stim_file(stim_files[name], folders, annexes)
            label = f"{name} (stim_file {stim_files[name]})"
        else:
            path, problem = _locate_by_stem(name, index, annexes)
            label = name
        if problem == "escapes":
            escaping.append(f"{label} -> {path}" if path else label)
        elif problem == "not fetched":
            unfetched.append(path)
        elif problem == "ambiguous":
            ambiguous.append(f"{name} ({', '.join(str(p) for p in path)})")
        elif path is None:
            missing.append(label)
        else:
            found[name] = str(path)
    where = ", ".join(str(folder) for folder in folders)
    if escaping:
        raise BidsReconError(
            f"{len(escaping)} stimulus path(s) would reach outside {where} (absolute, '..' or a symbolic link "
            f"out): {'; '.join(escaping)}; stimuli must lie inside their folder", EXIT_BAD_ARGUMENTS)
    if ambiguous:
        raise BidsReconError(
            f"{len(ambiguous)} stimulus name(s) match several images under {where}: {'; '.join(ambiguous)}; "
            "keep one image per name", EXIT_BAD_ARGUMENTS)
    if unfetched:
        raise BidsReconError(
            f"{len(unfetched)} stimulus image(s) are git-annex/DataLad files whose content is not here (not "
            f"fetched): {', '.join(str(path) for path in unfetched)}; fetch them first: `datalad get "
            f"{_shell_paths(unfetched)}` (or `git annex get` on the same files, in their dataset)",
            EXIT_INPUT_MISSING)
    if missing:
        raise BidsReconError(
            f"{len(missing)} stimulus image(s) not found under {where}: {', '.join(missing)}; put "
            f"<stimulus_name>.png (or {', '.join(IMAGE_SUFFIXES[1:])}) in the dataset's stimuli/ folder, "
            "or pass --stimuli-dir", EXIT_INPUT_MISSING)
    return found


def stim_file_map(trials):
    """Stimulus name → ``stim_file`` from a trial table (rows without ``stim_file`` left out).

    Parameters
    ----------
    trials : pandas.DataFrame
        Columns ``stimulus`` and, optionally, ``stim_file``.

    Returns
    -------
    dict of str to str
    """
    if "stim_file" not in trials.columns:
        return {}
    rows = trials[trials["stim_file"].notna() & (trials["stim_file"].astype(str).str.strip() != "")]
    files = rows.groupby("stimulus", sort=True)["stim_file"].unique()
    conflicts = [f"{name} ({', '.join(sorted(map(str, values)))})" for name, values in files.items() if len(values) > 1]
    if conflicts:
        raise BidsReconError(f"stimuli with several stim_file values: {'; '.join(conflicts)}; "
                             "one stimulus name must always name the same file")
    return {name: str(values[0]) for name, values in files.items()}


def _is_plain_name(name):
    """A name is looked up as a file stem: no folders, no climbing, nothing absolute."""
    text = str(name)
    return bool(text) and text not in (".", "..") and not any(c in text for c in "/\\\0")


def _is_relative_inside(relative):
    """Whether a stim_file is relative and never climbs (on POSIX or Windows spelling)."""
    text = str(relative)
    if not text or "\0" in text:
        return False
    for flavour in (PurePosixPath, PureWindowsPath):
        path = flavour(text)
        if path.is_absolute() or path.drive or path.root or ".." in path.parts:
            return False
    return True


def _locate_stim_file(relative, folders, annexes):
    """(path, problem) of a stim_file: problem is None, ``escapes``, ``not fetched`` or ``missing``."""
    if not _is_relative_inside(relative):
        return None, "escapes"
    for folder in folders:
        candidate = folder / relative
        if candidate.is_symlink() or candidate.is_file():
            problem = _target_problem(candidate, folder, annexes[folder])
            if problem != "missing":  # a broken link inside the folder: look in the next folder
                return candidate, problem
    return None, "missing"


def _locate_by_stem(name, index, annexes):
    """(path, problem) of a name looked up by stem in the first folder that has it."""
    for folder, stems in index:
        paths = stems.get(name)
        if not paths:
            continue
        if len(paths) > 1:
            return paths, "ambiguous"
        problem = _target_problem(paths[0], folder, annexes[folder])
        return (None, problem) if problem == "missing" else (paths[0], problem)
    return None, "missing"


def _index_by_stem(folders):
    """Per folder, the image files under it by stem (symbolic links to folders and ``.git`` are not entered)."""
    index = []
    for folder in folders:
        stems = {}
        if folder.is_dir():
            found = []
            for parent, subfolders, files in os.walk(folder):
                subfolders[:] = [name for name in subfolders if name != ".git"]
                found += [Path(parent) / name for name in files]
            for path in sorted(found):
                if path.suffix.lower() in IMAGE_SUFFIXES and (path.is_file() or path.is_symlink()):
                    stems.setdefault(path.stem, []).append(path)
        index.append((folder, stems))
    return index


def _target_problem(path, folder, annex):
    """None when ``path`` may be read; else ``escapes``, ``not fetched`` or ``missing``.

    A path may be read when it resolves (every symbolic link followed) inside ``folder``, or inside
    ``annex``, the ``.git/annex/objects`` of the folder's own repository (None when it has none).
    """
    target = Path(path).resolve()  # non-strict: a broken link resolves to where it points
    in_annex = annex is not None and target.is_relative_to(annex)
    if not (target.is_relative_to(Path(folder).resolve()) or in_annex):
        return "escapes"
    if target.is_file():
        return "not fetched" if _is_annex_pointer(target) else None
    return "not fetched" if in_annex else "missing"


def _annex_objects(folder):
    """``<repository>/.git/annex/objects`` of the git repository holding ``folder``, or None.

    The repository is the nearest folder at or above ``folder`` (its real location) with a
    ``.git`` folder; a ``.git`` that is a file or a link (worktrees, absorbed submodules) is not
    followed.
    """
    folder = Path(folder).resolve()
    for candidate in (folder, *folder.parents):
        git = candidate / ".git"
        if git.is_dir() and not git.is_symlink():
            return git / "annex" / "objects"
    return None


def _is_annex_pointer(path):
    """Whether a file is an unlocked git-annex file without its content (it holds the key's pointer)."""
    try:
        if path.stat().st_size > _ANNEX_POINTER_MAX_BYTES:
            return False
        with open(path, "rb") as handle:
            return handle.read(len(ANNEX_POINTER_PREFIX)) == ANNEX_POINTER_PREFIX
    except OSError:
        return False


def _shell_paths(paths, shown=5):
    """The first few paths, quoted for a shell, for a command the user can paste."""
    quoted = " ".join(shlex.quote(str(path)) for path in paths[:shown])
    return quoted + (" ..." if len(paths) > shown else "")
