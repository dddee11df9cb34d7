"""Names read from files a user hands us are labels, never paths.

A decoder sidecar, a specification or a filter file is data the user may have been given by
someone else. Where one of its values becomes part of a path we write or read (a test set's
``set-<name>`` in output names, the mask file named next to a saved decoder), it is checked
here first: a BIDS label is letters and digits only; a file name is one plain name in its
folder, with no separator, no ``..`` and no control character, so it cannot reach outside.
"""
import re

from bidsrecon.errors import EXIT_BAD_ARGUMENTS, BidsReconError

# BIDS: "a label ... consists only of alphanumeric characters".
LABEL = re.compile(r"[A-Za-z0-9]+")
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def is_label(value):
    return isinstance(value, str) and LABEL.fullmatch(value) is not None


def check_label(value, where):
    """``value`` if it is a BIDS label (letters and digits), else a one-line error naming ``where``."""
    if not is_label(value):
        raise BidsReconError(f"{where}: {value!r} is not a label; use letters and digits only (it becomes part "
                             "of output file names)", EXIT_BAD_ARGUMENTS)
    return value


def check_file_name(value, where):
    """``value`` if it is a plain file name (no folder part), else a one-line error naming ``where``."""
    if not (isinstance(value, str) and _FILE_NAME.fullmatch(value) and ".." not in value):
        raise BidsReconError(f"{where}: {value!r} is not a plain file name in its folder (letters, digits, "
                             "'.', '_', '+', '-'; no '/' and no '..'); the file must lie next to the one that "
                             "names it", EXIT_BAD_ARGUMENTS)
    return value


def check_path_name(name, what, fix):
    """``name`` as it is, if it can be one file or folder name of a layout we write or read (a stimulus,
    a layer, a test set of the Kamitani lab's layouts), else a one-line error naming it, ``what`` it
    is and the ``fix``.

    Refused: empty names, a slash or backslash, ``..``, a leading dot (hidden files, ``.`` and
    ``..``), control characters, and a double quote (bdpy's readers put names between double
    quotes in their SQL queries). Anything else a file system takes is allowed, unlike
    :func:`check_file_name`: stimulus names such as ``colorExpStim04_red_+`` stay as they are.
    """
    name = str(name)
    problem = ("is empty" if not name
               else "contains a slash or backslash" if "/" in name or "\\" in name
               else "contains '..'" if ".." in name
               else "starts with a dot" if name.startswith(".")
               else "contains a double quote" if '"' in name
               else "contains a control character" if re.search(r"[\x00-\x1f\x7f]", name)
               else None)
    if problem:
        raise BidsReconError(f"the {what} {name!r} {problem}, and it is used as a file name; {fix}",
                             EXIT_BAD_ARGUMENTS)
    return name
