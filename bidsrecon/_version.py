"""The version, read from the repository's ``version`` file (its single source)."""
from importlib import metadata
from pathlib import Path

_VERSION_FILE = Path(__file__).resolve().parent.parent / "version"


def _read_version():
    # A source checkout (or editable install) reads the file itself, so a bump shows at once.
    if _VERSION_FILE.is_file():
        return _VERSION_FILE.read_text().strip()
    return metadata.version("bidsrecon")


__version__ = _read_version()
