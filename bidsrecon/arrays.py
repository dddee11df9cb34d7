"""Named arrays on disk (safetensors: no code runs when they are read)."""
import numpy as np
from safetensors.numpy import load_file, save_file


def save_arrays(path, groups, metadata=None):
    """Save ``{group: {name: array}}`` as one safetensors file with keys ``group/name``."""
    flat = {f"{group}/{name}": np.ascontiguousarray(array) for group, arrays in groups.items() for name, array in arrays.items()}
    save_file(flat, str(path), metadata={k: str(v) for k, v in (metadata or {}).items()})


def load_arrays(path):
    """Inverse of `save_arrays`: ``{group: {name: array}}`` (names sorted; keep any order you need in the metadata)."""
    groups = {}
    for key, array in load_file(str(path)).items():
        group, name = key.split("/", 1)
        groups.setdefault(group, {})[name] = array
    return groups
