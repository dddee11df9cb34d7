"""Encoder features of training images kept on disk, so a second pass or subject reads them.

Each entry is one image's features at one layer, in its own safetensors file (no code runs
when it is read)::

    <directory>/<encoder name>-<weights id>/<layer>/<H>x<W>/<image sha256>.safetensors

The weights id (its first 32 characters in the path, all of it in the file's metadata) is the
sha256 of the encoder's weight file, or, for random encoders (which have no file), "random-"
and the sha256 of their description, which names the seed. The image hash is taken over
the float32 pixels the encoder sees (after loading and resizing), so any change of file, resizing
or colour handling gives a new entry.

Writes go to a temporary file in the entry's folder and are renamed into place
(:func:`os.replace` is atomic within a file system): processes decoding several subjects with the
same stimuli can share one cache, and a reader sees a whole entry or none. An entry that cannot be
read (truncated, not safetensors, no features tensor, non-finite values) counts as missing
and is recomputed and rewritten. Damage that leaves a readable file (flipped bits in the
data) is not detected: no checksum is kept, as checking one would cost a pass over 36 GB.

Size: VGG19's 19 layers at 224 px are 14.9 million units per image, 29.7 MB in float16; the
1,200 training images of ds001506 take 36 GB (71 GB in float32). ``layers=`` keeps only some.

Storage in float16 halves the disk and read cost. Its rounding error is at most 2⁻¹¹ of each
value (about 5e-4 relative; 3e-8 absolute below 6e-5, float16's subnormals); an entry with a
value beyond float16's range (65504) is stored in float32 instead.
Features are always returned as float32, rounded the way they are stored, so a pass that computes
an entry and a later pass that reads it see the same numbers.
"""
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

#: Storage types accepted by :class:`FeatureCache`.
STORAGE_DTYPES = ("float32", "float16")
_FLOAT16_MAX = float(np.finfo(np.float16).max)
_TENSOR_KEY = "features"


class FeatureCache:
    """Features of images at layers of one encoder, stored as safetensors files.

    Parameters
    ----------
    directory : str or Path
        Root folder of the cache (for example a folder of the work directory); created on the
        first write.
    encoder_name : str
        Name of the encoder (``encoder.name``).
    weights_id : str
        Identity of the weights: their sha256, or for random weights a string naming the seed.
    dtype : {"float32", "float16"}, default "float32"
        Storage type of new entries. Entries already stored are read whatever their type.
    layers : iterable of str, optional
        Layers kept in the cache; other layers are always recomputed. All layers when omitted
        (restricting it to the deep, small layers keeps most of the benefit at a fraction of
        the disk when the early layers are cheap to recompute).

    See Also
    --------
    FeatureCache.for_encoder : build one from an encoder of :mod:`bidsrecon.encoders`.
    """

    def __init__(self, directory, encoder_name, weights_id, *, dtype="float32", layers=None):
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"dtype must be one of {STORAGE_DTYPES}; got {dtype!r}.")
        for what, value in (("encoder_name", encoder_name), ("weights_id", weights_id)):
            if not isinstance(value, str) or not value or "/" in value or value.startswith("."):
                raise ValueError(f"{what} must be a non-empty string usable as a folder name; "
                                 f"got {value!r}.")
        self.directory = Path(directory)
        self.encoder_name = encoder_name
        self.weights_id = weights_id
        self.dtype = np.dtype(dtype)
        self.layers = None if layers is None else frozenset(layers)

    @classmethod
    def for_encoder(cls, directory, encoder, *, dtype="float32", layers=None):
        """Cache keyed by an encoder's name and weights (its sha256, or its seeded description).

        Parameters
        ----------
        directory : str or Path
        encoder : bidsrecon.encoders.Encoder
            Needs ``name``, ``weights_sha256`` and, for random weights, ``description``.
        dtype : {"float32", "float16"}, default "float32"
        layers : iterable of str, optional

        Returns
        -------
        FeatureCache
        """
        if encoder.weights_sha256:
            weights_id = encoder.weights_sha256
        else:
            # Random encoders have no file; their description names the seed.
            weights_id = "random-" + hashlib.sha256(encoder.description.encode()).hexdigest()
        return cls(directory, encoder.name, weights_id, dtype=dtype, layers=layers)

    def __repr__(self):
        return (f"FeatureCache({str(self.directory)!r}, {self.encoder_name!r}, "
                f"{self.weights_id[:16]!r}…, dtype={self.dtype.name!r})")

    def holds(self, layer):
        """Whether ``layer`` is kept in this cache (not whether an entry exists).

        Parameters
        ----------
        layer : str

        Returns
        -------
        bool
        """
        return self.layers is None or layer in self.layers

    def entry_path(self, image_hash, image_shape, layer):
        """File of one image's features at one layer.

        Parameters
        ----------
        image_hash : str
            :func:`image_sha256` of the image.
        image_shape : tuple of int
            (H, W, ...) of the image; its first two values name the size folder.
        layer : str

        Returns
        -------
        Path
        """
        size = f"{image_shape[0]}x{image_shape[1]}"
        return (self.directory / f"{self.encoder_name}-{self.weights_id[:32]}" / layer / size
                / f"{image_hash}.safetensors")

    def load(self, image_hash, image_shape, layer):
        """An entry's features as float32, or None when it is missing or unreadable.

        Parameters
        ----------
        image_hash : str
        image_shape : tuple of int
        layer : str

        Returns
        -------
        ndarray, float32, or None
        """
        path = self.entry_path(image_hash, image_shape, layer)
        try:
            stored = load_file(str(path))[_TENSOR_KEY]
        except (OSError, SafetensorError, KeyError):
            # Missing, truncated or not ours: the caller recomputes and rewrites it.
            return None
        if stored.dtype.name not in STORAGE_DTYPES or not np.all(np.isfinite(stored)):
            return None
        return stored.astype(np.float32)

    def store(self, image_hash, image_shape, layer, features):
        """Write an entry atomically; return the features as they will read back.

        Parameters
        ----------
        image_hash : str
        image_shape : tuple of int
        layer : str
        features : ndarray
            One image's features at ``layer`` (finite).

        Returns
        -------
        ndarray, float32
            ``features`` rounded to the storage type.
        """
        stored = self.as_stored(features)
        path = self.entry_path(image_hash, image_shape, layer)
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
        os.close(descriptor)
        try:
            save_file({_TENSOR_KEY: stored}, temporary,
                      metadata={"encoder": self.encoder_name, "weights": self.weights_id,
                                "layer": layer, "image_sha256": image_hash})
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return stored.astype(np.float32)

    def as_stored(self, features):
        """``features`` in the type they are stored in (float16 only where they fit its range).

        Parameters
        ----------
        features : ndarray

        Returns
        -------
        ndarray, contiguous, float16 or float32
        """
        dtype = self.dtype
        if dtype == np.float16 and np.abs(features).max(initial=0) > _FLOAT16_MAX:
            dtype = np.float32
        return np.ascontiguousarray(features, dtype=dtype)


def image_sha256(image):
    """sha256 of an image's float32 pixels and shape (the key of its cache entries).

    Parameters
    ----------
    image : ndarray, shape (H, W, 3)

    Returns
    -------
    str
    """
    pixels = np.ascontiguousarray(image, dtype=np.float32)
    digest = hashlib.sha256(repr(pixels.shape).encode())
    digest.update(pixels.tobytes())
    return digest.hexdigest()
