"""The weights of a ``.keras`` file (its ``model.weights.h5``), read in a child process as plain arrays.

HDF5 is a rich format parsed by a C library: a malformed file can crash libhdf5 (SIGSEGV), and a valid
one can hold features that reach outside it (a dataset stored in an external file or FIFO, an external
or soft link, a virtual dataset), filters that call compiled plugins, or storage that claims gigabytes
of fill values. None of that may reach the serving process, so the parent (:func:`read_weights`) never
hands these bytes to libhdf5: a child process (this file run as a script by the same interpreter, ``-I``,
importing nothing but NumPy and h5py) gets them on stdin, walks every object, refuses every feature a Keras
weights file does not need, reads the float arrays under ``layers/`` and writes them to stdout as an
uncompressed ``.npz`` (no pickles). The parent gives the child a deadline; a refusal, a crash (a signal), a
hang or a memory limit reached all end as :class:`WeightsRefused` with one line.

What the child accepts: groups and datasets joined by hard links only, each object reached once; datasets
with contiguous or compact storage, no filters, no external storage, not virtual, storage allocated and
lying inside the file, at most 4 dimensions; under ``layers/``, IEEE float32/float64 arrays without
attributes (Keras would read a ``dtype`` one as bfloat16) named ``.../vars/<i>``, together at most the
file's size. Attributes are never read. Nothing outside ``layers/`` is read (a compiled
model's optimizer state may sit there, checked the same way but never read).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import signal
import subprocess
import sys
from collections import OrderedDict

import numpy as np

READ_TIMEOUT_S = 30.0  # the child's deadline: start-up, parsing and reading; a hang ends in a refusal
MAX_OBJECTS = 10_000  # groups and datasets in the file (Keras writes a few per layer)
MAX_DEPTH = 16
MAX_RANK = 4
_VARIABLE = re.compile(r"layers(/[^/]+)+/vars/(0|[1-9][0-9]{0,5})")
_CACHE: OrderedDict[bytes, dict[str, np.ndarray]] = OrderedDict()  # sha256 of the bytes -> their arrays
_CACHE_ENTRIES = 8


class WeightsRefused(ValueError):
    """The weights file is refused; the message is one line saying why."""


def read_weights(data: bytes, name: str = "model.weights.h5") -> dict[str, np.ndarray]:
    """``{"layers/<path>/vars/<i>": float32 array}`` of the HDF5 bytes ``data``, read in a child process.

    The same bytes give the same (read-only) arrays without a second child: a bundle is loaded many times."""
    key = hashlib.sha256(data).digest()
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return dict(_CACHE[key])
    try:
        done = subprocess.run(_reader_command(len(data)), input=data, capture_output=True,
                              timeout=READ_TIMEOUT_S, env=_child_env(), check=False)
    except subprocess.TimeoutExpired:
        raise WeightsRefused(f"reading {name} took more than {READ_TIMEOUT_S:g} s; refused") from None
    if done.returncode < 0:
        raise WeightsRefused(f"{name} crashed the HDF5 reader ({_signal_name(-done.returncode)}): the file is "
                             "malformed; refused") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.decode("utf-8", "replace").splitlines() if line.strip()]
        why = lines[-1].strip()[:400] if lines else f"exit status {done.returncode}"
        raise WeightsRefused(why if done.returncode == 2 else f"the HDF5 reader failed on {name}: {why}")
    arrays = _unpack(done.stdout, name)
    _CACHE[key] = arrays
    while len(_CACHE) > _CACHE_ENTRIES:
        _CACHE.popitem(last=False)
    return dict(arrays)


def _reader_command(size: int) -> list[str]:
    """This file as a script, isolated from the environment (-I: no PYTHON* variables, no user site)."""
    return [sys.executable, "-I", os.path.abspath(__file__), str(size)]


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HDF5_")}
    # "::" turns off HDF5's dynamic plugin loading: no filter from the file loads a shared library.
    env |= {"HDF5_PLUGIN_PRELOAD": "::", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1"}
    return env


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _unpack(payload: bytes, name: str) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
            paths = [str(p) for p in npz["paths"]]
            arrays = {path: npz[f"a{i}"] for i, path in enumerate(paths)}
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise WeightsRefused(f"the HDF5 reader's answer for {name} is unreadable ({exc})") from None
    for path, array in arrays.items():
        if not _VARIABLE.fullmatch(path) or array.dtype != np.float32:
            raise WeightsRefused(f"the HDF5 reader's answer for {name} holds {path!r} ({array.dtype})")
        array.setflags(write=False)
    return arrays


# -- the child ----------------------------------------------------------------------------------------


def check_and_read(data: bytes) -> dict[str, np.ndarray]:
    """Walk the whole file, refuse what a Keras weights file does not need, read the arrays under layers/."""
    import h5py  # noqa: PLC0415

    out: dict[str, np.ndarray] = {}
    budget = len(data)  # unfiltered, contiguous data cannot be larger than the file that holds it
    seen: set = set()
    with h5py.File(io.BytesIO(data), "r") as f:
        stack = [(f, "", 0)]
        count = 0
        while stack:
            group, path, depth = stack.pop()
            for key in sorted(group):
                where = f"{path}/{key}" if path else key
                count += 1
                if count > MAX_OBJECTS:
                    raise WeightsRefused(f"model.weights.h5 holds more than {MAX_OBJECTS} objects; refused")
                link = group.get(key, getlink=True)
                if not isinstance(link, h5py.HardLink):
                    raise WeightsRefused(f"model.weights.h5: {where} is a {type(link).__name__}; a Keras weights "
                                         "file links nothing; refused")
                obj = group[key]
                if obj.id in seen:
                    raise WeightsRefused(f"model.weights.h5: {where} is an object reached twice; refused")
                seen.add(obj.id)
                if isinstance(obj, h5py.Group):
                    if depth + 1 > MAX_DEPTH:
                        raise WeightsRefused(f"model.weights.h5: {where} is nested deeper than {MAX_DEPTH}; refused")
                    stack.append((obj, where, depth + 1))
                elif isinstance(obj, h5py.Dataset):
                    nbytes = _check_dataset(obj, where, len(data))
                    if where.startswith("layers/"):
                        budget -= nbytes
                        if budget < 0:
                            raise WeightsRefused("model.weights.h5: its arrays claim more bytes than the file "
                                                 "holds; refused")
                        out[where] = _read(obj, where)
                else:
                    raise WeightsRefused(f"model.weights.h5: {where} is a {type(obj).__name__}, not a group or "
                                         "an array; refused")
    return out


def _check_dataset(ds, where: str, file_size: int) -> int:
    """The dataset's size in bytes, after refusing every storage feature Keras does not write."""
    import h5py  # noqa: PLC0415

    plist = ds.id.get_create_plist()
    if plist.get_external_count():
        raise WeightsRefused(f"model.weights.h5: {where} is stored in an external file; refused")
    layout = plist.get_layout()
    if layout == h5py.h5d.VIRTUAL:
        raise WeightsRefused(f"model.weights.h5: {where} is a virtual dataset; refused")
    if plist.get_nfilters():
        raise WeightsRefused(f"model.weights.h5: {where} is compressed or filtered; Keras writes neither; refused")
    if layout not in (h5py.h5d.CONTIGUOUS, h5py.h5d.COMPACT):
        raise WeightsRefused(f"model.weights.h5: {where} has chunked storage; Keras writes contiguous; refused")
    shape = ds.id.shape
    if shape is None or len(shape) > MAX_RANK:
        raise WeightsRefused(f"model.weights.h5: {where} has shape {shape}; refused")
    nbytes = int(np.prod([int(n) for n in shape], dtype=object)) * int(ds.id.get_type().get_size())
    if nbytes > file_size:
        raise WeightsRefused(f"model.weights.h5: {where} claims {nbytes} bytes, more than the file's {file_size}; "
                             "refused")
    if layout == h5py.h5d.CONTIGUOUS and nbytes:
        offset = ds.id.get_offset()
        if ds.id.get_storage_size() != nbytes or offset is None or offset + nbytes > file_size:
            raise WeightsRefused(f"model.weights.h5: {where}'s data does not lie inside the file; refused")
    return nbytes


def _read(ds, where: str) -> np.ndarray:
    import h5py  # noqa: PLC0415

    if not _VARIABLE.fullmatch(where):
        raise WeightsRefused(f"model.weights.h5: {where} is not a layer's variable (layers/.../vars/<i>); refused")
    if h5py.h5o.get_info(ds.id).num_attrs:  # Keras marks a bfloat16 variable with one; float32 ones have none
        raise WeightsRefused(f"model.weights.h5: {where} carries attributes; Keras writes none on float variables; "
                             "refused")
    kind = ds.id.get_type()
    if not any(kind == t for t in (h5py.h5t.IEEE_F32LE, h5py.h5t.IEEE_F32BE, h5py.h5t.IEEE_F64LE,
                                   h5py.h5t.IEEE_F64BE)):
        raise WeightsRefused(f"model.weights.h5: {where} is not an array of float32 or float64; refused")
    return np.asarray(ds[()], dtype=np.float32)


def _refuse_and_exit(line: str) -> None:
    sys.stderr.write(" ".join(line.split()) + "\n")
    sys.exit(2)


def _child(argv: list[str]) -> None:
    import resource  # noqa: PLC0415

    size = int(argv[1])
    data = sys.stdin.buffer.read(size + 1)
    if len(data) != size:
        _refuse_and_exit(f"model.weights.h5: got {len(data)} bytes, expected {size}")
    import h5py  # noqa: F401, PLC0415 - before the limits: imports map libraries

    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    memory = used + (1 << 30) + 8 * size
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    cpu = int(READ_TIMEOUT_S) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    try:
        arrays = check_and_read(data)
    except WeightsRefused as exc:
        _refuse_and_exit(str(exc))
    except MemoryError:
        _refuse_and_exit("model.weights.h5 needs more memory than its size allows; refused")
    except Exception as exc:  # noqa: BLE001 - h5py raises many kinds for a malformed file; all mean "refused"
        _refuse_and_exit(f"model.weights.h5 is not a readable HDF5 file ({type(exc).__name__}: {exc})")
    paths = list(arrays)
    buf = io.BytesIO()
    np.savez(buf, paths=np.array(paths, dtype=str), **{f"a{i}": arrays[p] for i, p in enumerate(paths)})
    sys.stdout.buffer.write(buf.getvalue())
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    _child(sys.argv)
