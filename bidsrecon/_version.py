"""The version, read from the repository's ``version`` file (its single source)."""
import hashlib
from importlib import metadata
from pathlib import Path

_VERSION_FILE = Path(__file__).resolve().parent.parent / "version"
_PACKAGE = Path(__file__).resolve().parent


def _read_version():
    # A source checkout (or editable install) reads the file itself, so a bump shows at once.
    if _VERSION_FILE.is_file():
        return _VERSION_FILE.read_text().strip()
    return metadata.version("bidsrecon")


__version__ = _read_version()


def source_fingerprint():
    """The first 12 hex digits of a hash over the package's Python files, paths and contents."""
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*.py")):
        digest.update(path.relative_to(_PACKAGE).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def cached_results_version():
    """What cached results are keyed on: the version, and in a source checkout the source's hash.

    An installed release's code changes only with its version. A checkout's code changes with
    every edit while the version stays, and a rerun would reuse results the old code computed
    (``make demo`` redrew its figure from them without a word).
    """
    if _VERSION_FILE.is_file():
        return f"{__version__}+src.{source_fingerprint()}"
    return __version__
