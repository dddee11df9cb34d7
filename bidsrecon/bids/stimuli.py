"""Find the image file of each stimulus, without ever reading outside the stimulus folders.

Two ways to name a stimulus's file:

- a ``stim_file`` column in events.tsv (BIDS): the path relative to the dataset's ``stimuli/``
  folder; with ``--stimuli-dir`` the given folders stand in for ``stimuli/`` (first hit wins);
- otherwise by name: stimulus ``n01518878_5958`` is the file ``n01518878_5958.<ext>`` anywhere
  under one of the folders (the first folder that has it wins), any of :data:`IMAGE_SUFFIXES`.

A ``stim_file`` or name that is absolute, climbs with ``..``, or leads (through a symbolic link)
outside its folder is refused.
"""
from pathlib import Path, PurePosixPath, PureWindowsPath

from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_INPUT_MISSING, BidsReconError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")


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
        or whose name matches several files in one folder; else exit 66 naming every stimulus
        that is not found.
    """
    names = list(dict.fromkeys(names))
    stim_files = stim_files or {}
    folders = [Path(folder) for folder in search_dirs]
    found, missing, escaping, ambiguous = {}, [], [], []
    by_name = [name for name in names if name not in stim_files]
    unsafe_names = [name for name in by_name if not _is_plain_name(name)]
    escaping += [f"stimulus name {name!r}" for name in unsafe_names]
    index = _index_by_stem(folders) if by_name else {}
    for name in names:
        if name in unsafe_names:
            continue
        if name in stim_files:
            path, problem = _locate_stim_file(stim_files[name], folders)
            label = f"{name} (stim_file {stim_files[name]})"
        else:
            path, problem = _locate_by_stem(name, index)
            label = name
        if problem == "escapes":
            escaping.append(f"{label} -> {path}" if path else label)
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


def _locate_stim_file(relative, folders):
    """(path, problem) of a stim_file: problem is None, ``escapes`` or ``missing``."""
    if not _is_relative_inside(relative):
        return None, "escapes"
    for folder in folders:
        candidate = folder / relative
        if candidate.is_symlink() and not _resolves_inside(candidate, folder):
            return candidate, "escapes"
        if candidate.is_file():
            return candidate, None if _resolves_inside(candidate, folder) else "escapes"
    return None, "missing"


def _locate_by_stem(name, index):
    """(path, problem) of a name looked up by stem in the first folder that has it."""
    for folder, stems in index:
        paths = stems.get(name)
        if not paths:
            continue
        if len(paths) > 1:
            return paths, "ambiguous"
        if not _resolves_inside(paths[0], folder):
            return paths[0], "escapes"
        return (paths[0], None) if paths[0].is_file() else (None, "missing")
    return None, "missing"


def _index_by_stem(folders):
    """Per folder, the image files under it by stem (symbolic links to folders are not entered)."""
    index = []
    for folder in folders:
        stems = {}
        if folder.is_dir():
            for path in sorted(folder.rglob("*")):
                if path.suffix.lower() in IMAGE_SUFFIXES and (path.is_file() or path.is_symlink()):
                    stems.setdefault(path.stem, []).append(path)
        index.append((folder, stems))
    return index


def _resolves_inside(path, folder):
    # resolve() follows every symbolic link, so a link out of the folder is caught here.
    return Path(path).resolve().is_relative_to(Path(folder).resolve())
