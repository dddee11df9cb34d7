"""Named arrays on disk (safetensors: no code runs when they are read)."""
import json
import struct
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save


def save_arrays(path, groups, metadata=None):
    """Save ``{group: {name: array}}`` as one safetensors file with keys ``group/name``.

    The same arrays and metadata always give the same bytes (so a resumed run's outputs equal an
    uninterrupted run's, and hashes of outputs are stable).
    """
    flat = {f"{group}/{name}": np.ascontiguousarray(array) for group, arrays in groups.items() for name, array in arrays.items()}
    data = save(flat, metadata={k: str(v) for k, v in (metadata or {}).items()})
    Path(path).write_bytes(_sorted_metadata(data))


def _sorted_metadata(data):
    # safetensors writes its metadata map in a per-process random order; sort it. The header is
    # the same JSON reordered, so it keeps its length and every offset stays valid.
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + length])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) > length:  # never expected; keep the file as written rather than break it
        return data
    return data[:8] + text.ljust(length, b" ") + data[8 + length:]


def load_arrays(path):
    """Inverse of `save_arrays`: ``{group: {name: array}}`` (names sorted; keep any order you need in the metadata)."""
    groups = {}
    for key, array in load_file(str(path)).items():
        group, name = key.split("/", 1)
        groups.setdefault(group, {})[name] = array
    return groups
