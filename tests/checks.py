"""Checks shared by the tests of bad input: nothing changed on disk, one clear error line."""
import hashlib
import os
from pathlib import Path


def checksums(folder):
    """Every entry under ``folder`` by relative path: a file's SHA-256, a link's target, "dir" for a folder."""
    return {str(path.relative_to(folder)): os.readlink(path) if path.is_symlink() else
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
            for path in sorted(Path(folder).rglob("*"))}


def one_line_error(result, code, *fragments):
    """``result`` (a CompletedProcess) exited ``code`` with one ``bidsrecon: error:`` line holding ``fragments``.

    Returns the line.
    """
    assert result.returncode == code, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("bidsrecon: error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def without_console(stderr):
    """``stderr`` without the console's progress lines (``12:03:07 ...``, bidsrecon.console)."""
    import re

    return "\n".join(line for line in stderr.splitlines() if not re.match(r"\d\d:\d\d:\d\d ", line))
