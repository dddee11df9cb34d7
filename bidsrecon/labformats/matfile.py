"""MATLAB files as the Kamitani lab's code writes them: v5 (scipy) or v7.3 (HDF5, what bdpy's
``save_array`` and ``save_feature`` write through hdf5storage), read with scipy or h5py and never
unpickled, and written in v7.3 with h5py in the form bdpy's ``load_array`` reads.

A v7.3 file stores an array with its axes reversed (MATLAB's column-major order); hdf5storage's
``Python.Shape`` attribute restores a 0-D or 1-D shape. bdpy's sparse array is a struct of
``index`` (a cell of one int array per axis), ``value``, ``shape`` and ``background``.
"""
from pathlib import Path

import h5py
import numpy as np
import scipy.io
import scipy.sparse

from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_INPUT_MISSING, BidsReconError

#: What scipy raises on a file that is not MATLAB v5 (truncated, another format, v7.3 without HDF5's signature).
NOT_MATLAB = (scipy.io.matlab.MatReadError, ValueError, OSError, EOFError, IndexError, TypeError,
              NotImplementedError)
# The 128-byte text MATLAB reads at the start of a v7.3 file (the HDF5 user block).
_MAT_HEADER = b"MATLAB 7.3 MAT-file, Platform: bidsrecon, HDF5 schema 1.00 ."
_USER_BLOCK = 512


def missing_key(path, key, names):
    """The error for a MATLAB file without the array ``key``."""
    return BidsReconError(f"{path}: holds no {key!r} array (it has {', '.join(sorted(names)) or 'nothing'})",
                          EXIT_BAD_ARGUMENTS)


def unreadable(path, error):
    """The error for a file that is not MATLAB v5 or v7.3."""
    return BidsReconError(f"{path}: cannot read it as a MATLAB file ({error}); the lab's files are MATLAB v5 or "
                          "v7.3 (HDF5)", EXIT_INPUT_MISSING)


def mat_shape(path, key):
    """Shape of the array ``key`` of a MATLAB file, read from its header (no data read)."""
    path = Path(path)
    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as stream:
            dataset = stream.get(key)
            if not isinstance(dataset, h5py.Dataset):
                raise missing_key(path, key, list(stream))
            return tuple(reversed(dataset.shape))
    try:
        variables = scipy.io.whosmat(path)
    except NOT_MATLAB as error:
        raise unreadable(path, error) from None
    shapes = {name: shape for name, shape, _ in variables}
    if key not in shapes:
        raise missing_key(path, key, list(shapes))
    return tuple(shapes[key])


def read_mat_array(path, key):
    """A dense array from a MATLAB v5 or v7.3 (HDF5) file, in the shape it was saved with.

    A bdpy sparse array is returned dense.
    """
    array = _read_mat(path, key)
    if isinstance(array, tuple):
        index, values, shape = array
        array = np.zeros(shape, dtype=np.float64)
        array[index] = values
    return array


def read_mat_sparse(path, key):
    """An array from a MATLAB file as (index arrays, values, shape), from bdpy's sparse form or dense.

    Returns
    -------
    index : tuple of ndarray of int, one per axis
    values : ndarray
    shape : tuple of int
    """
    array = _read_mat(path, key)
    if isinstance(array, tuple):
        return array
    index = np.nonzero(array)
    return index, array[index], array.shape


def _read_mat(path, key):
    """A dense ndarray, or a sparse array as (index, values, shape)."""
    path = Path(path)
    if not path.is_file():
        raise BidsReconError(f"{path}: no such file.", EXIT_INPUT_MISSING)
    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as file:
            if key not in file:
                raise missing_key(path, key, [name for name in file if name != "#refs#"])
            node = file[key]
            array = _sparse_array(file, node, path, key) if isinstance(node, h5py.Group) else _dataset_array(node)
    else:
        try:
            content = scipy.io.loadmat(path)
        except NOT_MATLAB as error:
            raise unreadable(path, error) from None
        if key not in content:
            raise missing_key(path, key, [name for name in content if not name.startswith("__")])
        array = content[key]
        if scipy.sparse.issparse(array):
            coo = scipy.sparse.coo_array(array)
            return (coo.row, coo.col), coo.data, tuple(coo.shape)
    if isinstance(array, tuple):
        return array
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.number):
        raise BidsReconError(f"{path}: {key!r} is not a numeric array.", EXIT_BAD_ARGUMENTS)
    return array


def _sparse_array(file, group, path, key):
    """bdpy's sparse array: a struct of index (a cell, one int array per axis), value, shape, background."""
    if not {"index", "value", "shape"} <= set(group):
        raise BidsReconError(f"{path}: {key!r} is a group but not bdpy's sparse array (index, value, shape).",
                             EXIT_BAD_ARGUMENTS)
    index = tuple(file[ref][()].reshape(-1).astype(np.int64) for ref in _cell(group["index"]))
    if group["shape"].dtype == h5py.ref_dtype:
        shape = tuple(int(np.ravel(file[ref][()])[0]) for ref in _cell(group["shape"]))
    else:
        shape = tuple(int(n) for n in group["shape"][()].ravel())
    values = group["value"][()].reshape(-1)
    background = float(np.ravel(group["background"][()])[0]) if "background" in group else 0.0
    if background != 0 or len(index) != len(shape) or any(len(i) != len(values) for i in index):
        raise BidsReconError(f"{path}: {key!r} is a malformed sparse array (background {background}, "
                             f"{len(index)} index arrays for shape {list(shape)}).", EXIT_BAD_ARGUMENTS)
    return index, values, shape


def _cell(dataset):
    return [ref for ref in dataset[()].reshape(-1)]


def _dataset_array(dataset):
    """MATLAB stores axes reversed; hdf5storage's ``Python.Shape`` restores a 1-D or 0-D shape."""
    array = dataset[()].T
    shape = dataset.attrs.get("Python.Shape")
    if shape is not None and int(np.prod(shape)) == array.size:
        array = array.reshape(tuple(int(n) for n in shape))
    return array


def write_mat_array(path, key, array):
    """A dense float32 array in a MATLAB v7.3 file, as bdpy's ``save_array`` writes it."""
    with _new_mat_file(path) as file:
        _write_dataset(file, key, np.asarray(array, dtype=np.float32))


def write_mat_sparse(path, key, index, values, shape):
    """bdpy's sparse array (``index``: one int array per axis; ``values``; dense ``shape``)."""
    with _new_mat_file(path) as file:
        refs = file.create_group("#refs#")
        group = file.create_group(key)
        fields = ["__bdpy_sparse_arrray", "index", "value", "shape", "background"]
        group.attrs["MATLAB_class"] = np.bytes_("struct")
        group.attrs["Python.Type"] = np.bytes_("dict")
        group.attrs["Python.dict.StoredAs"] = np.bytes_("individually")
        group.attrs["Python.dict.key_str_types"] = np.bytes_("t" * len(fields))
        group.attrs.create("Python.Fields", np.array(fields, dtype=object), dtype=h5py.string_dtype())
        group.attrs.create("MATLAB_fields", [np.array(list(name), dtype="S1") for name in fields],
                           dtype=h5py.vlen_dtype(np.dtype("S1")))
        flag = group.create_dataset("__bdpy_sparse_arrray", data=np.ones((1, 1), dtype=np.uint8))
        flag.attrs["MATLAB_class"] = np.bytes_("logical")
        flag.attrs["MATLAB_int_decode"] = np.int64(1)
        _python_attrs(flag, (), "bool", "scalar", "bool")
        _write_cell(group, refs, "index", [np.asarray(axis, dtype=np.int64) for axis in index])
        _write_dataset(group, "value", np.asarray(values, dtype=np.float32))
        _write_cell(group, refs, "shape", [np.int64(n) for n in shape])
        _write_dataset(group, "background", np.int64(0))


def _new_mat_file(path):
    path = Path(path)
    with h5py.File(path, "w", userblock_size=_USER_BLOCK):
        pass
    with open(path, "r+b") as raw:  # MATLAB's header in the user block
        raw.write(_MAT_HEADER.ljust(116, b" ") + bytes(8) + b"\x00\x02IM")
    return h5py.File(path, "r+")


def _write_dataset(parent, name, value):
    """An array as MATLAB stores it (axes reversed), with the attributes hdf5storage reads."""
    value = np.asarray(value)
    stored = value.reshape(1, 1) if value.ndim == 0 else value.reshape(1, -1) if value.ndim == 1 else value.T
    dataset = parent.create_dataset(name, data=stored)
    dataset.attrs["MATLAB_class"] = np.bytes_({"float32": "single", "float64": "double"}.get(
        value.dtype.name, value.dtype.name))
    python_type = "long" if value.ndim == 0 else "numpy.ndarray"
    _python_attrs(dataset, value.shape, python_type, "scalar" if value.ndim == 0 else "ndarray",
                  value.dtype.name)
    return dataset


def _python_attrs(dataset, shape, python_type, container, underlying):
    dataset.attrs["Python.Shape"] = np.array(shape, dtype=np.uint64)
    dataset.attrs["Python.Type"] = np.bytes_(python_type)
    dataset.attrs["Python.numpy.Container"] = np.bytes_(container)
    dataset.attrs["Python.numpy.UnderlyingType"] = np.bytes_(underlying)


def _write_cell(group, refs, name, values):
    """A MATLAB cell (a Python tuple to hdf5storage): references to datasets in ``#refs#``."""
    references = []
    for value in values:
        target = _write_dataset(refs, f"{name}{len(refs)}", value)
        references.append(target.ref)
    cell = group.create_dataset(name, data=np.array([references], dtype=h5py.ref_dtype))
    cell.attrs["MATLAB_class"] = np.bytes_("cell")
    _python_attrs(cell, (len(values),), "tuple", "ndarray", "object")
