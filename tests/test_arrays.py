"""Named arrays on disk: the round trip, and the same bytes for the same content in every process."""
import hashlib
import subprocess
import sys

import numpy as np

from bidsrecon.arrays import load_arrays, save_arrays

WRITE = """
import sys
import numpy as np
from bidsrecon.arrays import save_arrays
save_arrays(sys.argv[1], {"fit": {"X": np.arange(6.0).reshape(2, 3)}, "alpha": {"a": np.ones(1)}},
            metadata={key: key * 3 for key in ("format", "layers", "encoder", "version", "zeta", "alpha")})
"""


def test_round_trip(tmp_path):
    groups = {"fit": {"X": np.arange(6.0).reshape(2, 3), "index": np.arange(4)}, "alpha": {"conv1": np.ones(1)}}
    save_arrays(tmp_path / "a.safetensors", groups, metadata={"format": "test", "note": "é"})
    loaded = load_arrays(tmp_path / "a.safetensors")
    assert set(loaded) == set(groups)
    for group, arrays in groups.items():
        for name, array in arrays.items():
            np.testing.assert_array_equal(loaded[group][name], array)


def test_same_content_gives_the_same_bytes_in_every_process(tmp_path):
    """safetensors orders its metadata at random per process; a rerun's outputs must not change."""
    digests = set()
    for index in range(4):
        path = tmp_path / f"{index}.safetensors"
        subprocess.run([sys.executable, "-c", WRITE, str(path)], check=True)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1
