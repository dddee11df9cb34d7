"""Find the image file of each stimulus by its name."""
from pathlib import Path

from bidsrecon.errors import EXIT_INPUT_MISSING, BidsReconError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")


def find_stimuli(names, search_dirs):
    """Map each stimulus name to its image file.

    A stimulus ``n01518878_5958`` is the file ``n01518878_5958.<ext>`` anywhere under one of
    ``search_dirs`` (the dataset's ``stimuli/`` folder or ``--stimuli-dir``), any image extension.

    Returns
    -------
    dict of str to str
    """
    index = {}
    for folder in search_dirs:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                index.setdefault(path.stem, str(path))
    missing = sorted(set(names) - set(index))
    if missing:
        where = ", ".join(str(d) for d in search_dirs)
        raise BidsReconError(
            f"{len(missing)} stimulus image(s) not found under {where}, e.g. {', '.join(missing[:5])}; "
            "put <stimulus_name>.png (or .jpg) in the dataset's stimuli/ folder or pass --stimuli-dir",
            EXIT_INPUT_MISSING,
        )
    return {name: index[name] for name in names}
