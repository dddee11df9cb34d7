"""The folders a run reads and writes: inputs, output and work dir kept apart; the work dir private.

Two rules, checked before anything is read or written:

- **Nothing we write lands in what we read.** The output dataset and the work dir may not lie
  inside, contain or equal any input (``bids_dir``, each ``--derivatives`` folder,
  ``--decoders-dir``, each ``--stimuli-dir``), nor each other: an fMRIPrep folder given as the
  output would have its ``dataset_description.json`` replaced, and a work dir inside the output
  would put Nipype's files into the derivatives.
- **The work dir is the user's alone.** Nipype caches every step's result there as a pickle and
  unpickles it on the next run, so whoever can write into the work dir can run code as the user.
  The default (``<tmp>/bidsrecon-work-<uid>``) and any ``-w`` folder that does not exist yet are
  created with mode 0700. An existing work dir must belong to the user, must not be writable by
  group or others, and nothing inside it may belong to another user (a planted result file), nor,
  when others can enter the folder, be writable by them.

A lock file per participant (``<work>/sub-<label>/.lock``, ``flock``) stops a second run of the
same participant on the same work dir at once, instead of both failing midway on each other's files.
"""
import contextlib
import fcntl
import os
import stat
import tempfile
from pathlib import Path

from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_BUSY, EXIT_CANNOT_WRITE, BidsReconError


def default_work_dir():
    """``<system tmp>/bidsrecon-work-<uid>``: one per user, so that no two users share one."""
    return Path(tempfile.gettempdir()) / f"bidsrecon-work-{os.geteuid()}"


def _overlap(first, second):
    return first == second or first in second.parents or second in first.parents


def check_disjoint(outputs, inputs):
    """Stop unless every output folder is apart from every input and from the other outputs.

    Parameters
    ----------
    outputs, inputs : sequence of (str, Path)
        ``(what the user called it, folder)``, e.g. ``("the output_dir", Path(...))``; resolved here.

    Raises
    ------
    BidsReconError
        Exit 64 naming both folders and what to change.
    """
    outputs = [(name, Path(path).resolve()) for name, path in outputs]
    inputs = [(name, Path(path).resolve()) for name, path in inputs]
    for index, (name, path) in enumerate(outputs):
        for other_name, other in [*inputs, *outputs[index + 1:]]:
            if _overlap(path, other):
                relation = ("is" if path == other else "is inside" if other in path.parents else "contains")
                raise BidsReconError(
                    f"{name} {path} {relation} {other_name} {other}; give folders that do not overlap "
                    "(bidsrecon never writes into its inputs, and keeps its work dir out of its output)",
                    EXIT_BAD_ARGUMENTS)


def prepare_work_dir(path):
    """Create ``path`` (mode 0700) if it does not exist, then check that only this user can write in it.

    Returns
    -------
    Path
        ``path``, resolved.

    Raises
    ------
    BidsReconError
        Exit 64 naming the folder or file at fault and the fix.
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:  # made by a parallel job of this user since; checked below
            pass
        else:
            os.chmod(path, 0o700)  # the umask may have taken bits away, never added: this is exact
    path = path.resolve()
    if not path.is_dir():
        raise BidsReconError(f"the work directory {path} is not a folder; give another -w", EXIT_BAD_ARGUMENTS)
    fix = (f"Use a work directory only you can write to: remove {path} (or give another -w), and bidsrecon "
           "creates it with mode 0700")
    top = path.stat()
    if top.st_uid != os.geteuid():
        # In a container run as root, a bind-mounted folder belongs to the user on the host.
        container = (" In a container, run as the folder's owner (docker run -u $(id -u):$(id -g) ...)."
                     if os.geteuid() == 0 else "")
        raise BidsReconError(
            f"the work directory {path} belongs to user id {top.st_uid}, not to you ({os.geteuid()}); Nipype runs "
            f"the cached results it finds there, so they must be yours. {fix}.{container}", EXIT_BAD_ARGUMENTS)
    if top.st_mode & 0o022:
        raise BidsReconError(
            f"the work directory {path} is writable by {_who(top.st_mode)} (mode {stat.filemode(top.st_mode)}); "
            f"Nipype runs the cached results it finds there. Run 'chmod go-w {path}', or: {fix}.",
            EXIT_BAD_ARGUMENTS)
    others_can_enter = bool(top.st_mode & 0o011)
    for folder, subfolders, files in os.walk(path):
        for name in (*subfolders, *files):
            entry = Path(folder) / name
            info = entry.lstat()
            if info.st_uid != os.geteuid():
                raise BidsReconError(
                    f"{entry} in the work directory belongs to user id {info.st_uid}, not to you: someone else "
                    f"wrote into the work directory, and Nipype would run what it holds. {fix}.",
                    EXIT_BAD_ARGUMENTS)
            if others_can_enter and not stat.S_ISLNK(info.st_mode) and info.st_mode & 0o022:
                raise BidsReconError(
                    f"{entry} in the work directory is writable by {_who(info.st_mode)}, and they can enter "
                    f"{path}; run 'chmod -R go-w {path}', or: {fix}.", EXIT_BAD_ARGUMENTS)
    return path


def _who(mode):
    return " and ".join(name for name, bit in (("its group", 0o020), ("others", 0o002)) if mode & bit)


@contextlib.contextmanager
def participant_locks(work_dir, subjects):
    """Hold ``<work_dir>/sub-<label>/.lock`` of every subject for the ``with`` block; stop if one is held.

    Raises
    ------
    BidsReconError
        Exit 75 when another bidsrecon process is working on one of the participants in ``work_dir``.
    """
    with contextlib.ExitStack() as stack:
        for subject in subjects:
            folder = Path(work_dir) / f"sub-{subject}"
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            descriptor = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            stack.callback(os.close, descriptor)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
                raise BidsReconError(
                    f"another bidsrecon run (process {holder}) is working on sub-{subject} in the work directory "
                    f"{work_dir}; wait until it ends (this command then resumes from its results), or give this "
                    "run another -w", EXIT_BUSY) from None
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, str(os.getpid()).encode(), 0)
        yield


def check_writable(path, name):
    """Stop unless ``path`` is a folder (or can become one) that this user can write in.

    Raises
    ------
    BidsReconError
        Exit 64 when ``path`` is a file; exit 73 when it, or the folder it would be made in, is
        read-only for this user.
    """
    path = Path(path).resolve()
    if path.exists() and not path.is_dir():
        raise BidsReconError(f"{name} {path} is a file, not a folder; give a folder (it is created if missing)",
                             EXIT_BAD_ARGUMENTS)
    existing = next(folder for folder in (path, *path.parents) if folder.exists())
    if not existing.is_dir():
        raise BidsReconError(f"{name} {path} cannot be created: {existing} is a file", EXIT_BAD_ARGUMENTS)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BidsReconError(f"{name} {path} cannot be written: {existing} is read-only for you; give a folder "
                             "you can write to", EXIT_CANNOT_WRITE)
