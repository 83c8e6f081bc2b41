"""Checkpoints: a model's parameters, optimizer state, counters and seed in one portable file.

Format, version 1 (all integers little-endian)::

    offset  size  field
    0       8     magic b"\\x89GRAPHC\\n"
    8       4     format version (uint32) = 1
    12      4     header length H in bytes (uint32)
    16      H     header: UTF-8 JSON object (below)
    16+H    D     tensor data: raw little-endian arrays, C order, back to back
    16+H+D  4     CRC-32 (uint32, zlib.crc32) of every byte before it

The header holds ``format`` ("graphc-checkpoint"), ``graph`` (the graph's name), ``dtype``
("float32" or "float64"), ``optimizer`` (its one-line description), ``step`` and ``epoch``
(the model's counters), ``seed`` (the model's seed: it drives shuffling and dropout
masks), ``lr`` (the base learning rate η0, or null), and ``tensors``: a list of
``{"name", "role", "state", "shape", "dtype", "offset"}`` where role is "param" or
"state", state names the optimizer state ("m", "v", ...; null for a parameter), dtype is
a NumPy little-endian code ("<f4", "<f8") and offset counts bytes from the data start.
No pickle: reading a file never runs code from it.

Files are written atomically: to a temporary file in the same directory, flushed and
fsync'ed, then renamed over the destination with ``os.replace``.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphc.errors import CheckpointError

MAGIC = b"\x89GRAPHC\n"
VERSION = 1
FORMAT = "graphc-checkpoint"
_PREFIX = struct.Struct("<8sII")
_CRC = struct.Struct("<I")
_DTYPES = {"float32": "<f4", "float64": "<f8"}


@dataclass
class Checkpoint:
    """What a checkpoint file holds; ``gc.load`` returns one, ``model.load`` takes one.

    ``params`` maps parameter names to arrays (``model.set_params(ckpt.params,
    strict=False)`` transfers them by name into another model); ``state`` maps a
    parameter name to its optimizer state arrays by state name.
    """

    graph: str
    dtype: str
    params: dict[str, np.ndarray]
    state: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    step: int = 0
    epoch: int = 0
    seed: int = 0
    lr: float | None = None
    optimizer: str = "none"
    version: int = VERSION

    def __repr__(self) -> str:
        return (
            f"<Checkpoint of {self.graph!r} ({self.dtype}): {len(self.params)} params, "
            f"step {self.step}, epoch {self.epoch}, optimizer {self.optimizer}>"
        )


def save(checkpoint: Checkpoint, path: str | os.PathLike) -> None:
    """Write ``checkpoint`` to ``path`` atomically (temporary file, fsync, os.replace)."""
    path = os.fspath(path)
    if checkpoint.dtype not in _DTYPES:
        raise CheckpointError(f"cannot save dtype {checkpoint.dtype!r}; use float32 or float64")
    code = _DTYPES[checkpoint.dtype]
    entries: list[tuple[dict[str, Any], np.ndarray]] = []
    for name, array in checkpoint.params.items():
        entries.append(({"name": name, "role": "param", "state": None}, array))
    for name, states in checkpoint.state.items():
        for state, array in states.items():
            entries.append(({"name": name, "role": "state", "state": state}, array))
    tensors, blobs, offset = [], [], 0
    for meta, array in entries:
        data = np.ascontiguousarray(array, dtype=code).tobytes()
        tensors.append({**meta, "shape": list(np.shape(array)), "dtype": code, "offset": offset})
        blobs.append(data)
        offset += len(data)
    header = {
        "format": FORMAT,
        "graph": checkpoint.graph,
        "dtype": checkpoint.dtype,
        "optimizer": checkpoint.optimizer,
        "step": int(checkpoint.step),
        "epoch": int(checkpoint.epoch),
        "seed": int(checkpoint.seed),
        "lr": None if checkpoint.lr is None else float(checkpoint.lr),
        "tensors": tensors,
    }
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    body = _PREFIX.pack(MAGIC, VERSION, len(text)) + text + b"".join(blobs)
    _atomic_write(path, body + _CRC.pack(zlib.crc32(body)))


def _atomic_write(path: str, data: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-ckpt-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    # make the rename itself durable where the platform allows opening a directory
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def load(path: str | os.PathLike) -> Checkpoint:
    """Read and verify a checkpoint file; any defect raises CheckpointError naming it."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path!r}: {exc.strerror or exc}") from exc
    return parse(raw, path)


def parse(raw: bytes, path: str = "<bytes>") -> Checkpoint:
    """Decode the bytes of a checkpoint file (see the module docstring for the layout)."""
    where = f"checkpoint {path!r}"
    if len(raw) < _PREFIX.size + _CRC.size:
        raise CheckpointError(
            f"{where} is truncated: {len(raw)} bytes is shorter than any checkpoint"
        )
    magic, version, header_len = _PREFIX.unpack_from(raw)
    if magic != MAGIC:
        raise CheckpointError(f"{where} is not a graphc checkpoint (its first bytes are {magic!r})")
    if version != VERSION:
        raise CheckpointError(
            f"{where} has format version {version}; this graphc reads version {VERSION}"
        )
    data_start = _PREFIX.size + header_len
    if data_start + _CRC.size > len(raw):
        raise CheckpointError(
            f"{where} is truncated: its header needs {data_start + _CRC.size} bytes, "
            f"the file has {len(raw)}"
        )
    try:
        header = json.loads(raw[_PREFIX.size : data_start].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(
            f"{where} is corrupt: its JSON header does not parse ({exc})"
        ) from exc
    tensors = _tensor_entries(header, where)
    data_len = max((t["offset"] + t["nbytes"] for t in tensors), default=0)
    expected = data_start + data_len + _CRC.size
    if len(raw) < expected:
        raise CheckpointError(
            f"{where} is truncated: the header describes {expected} bytes, the file has {len(raw)}"
        )
    if len(raw) > expected:
        raise CheckpointError(
            f"{where} is corrupt: {len(raw) - expected} unexpected bytes after the tensor data"
        )
    (stored,) = _CRC.unpack_from(raw, len(raw) - _CRC.size)
    actual = zlib.crc32(raw[: len(raw) - _CRC.size])
    if stored != actual:
        raise CheckpointError(
            f"{where} is corrupt: CRC-32 {actual:#010x} of its contents does not match the "
            f"stored {stored:#010x}"
        )
    params: dict[str, np.ndarray] = {}
    state: dict[str, dict[str, np.ndarray]] = {}
    for t in tensors:
        start = data_start + t["offset"]
        array = np.frombuffer(raw, dtype=t["dtype"], count=t["count"], offset=start)
        array = array.reshape(t["shape"]).astype(np.dtype(t["dtype"]).newbyteorder("="))
        if t["role"] == "param":
            if t["name"] in params:
                raise CheckpointError(f"{where} is corrupt: parameter {t['name']!r} appears twice")
            params[t["name"]] = array
        else:
            states = state.setdefault(t["name"], {})
            if t["state"] in states:
                raise CheckpointError(
                    f"{where} is corrupt: state {t['state']!r} of {t['name']!r} appears twice"
                )
            states[t["state"]] = array
    return Checkpoint(
        graph=header["graph"],
        dtype=header["dtype"],
        params=params,
        state=state,
        step=header["step"],
        epoch=header["epoch"],
        seed=header["seed"],
        lr=header["lr"],
        optimizer=header["optimizer"],
        version=version,
    )


def _tensor_entries(header: Any, where: str) -> list[dict[str, Any]]:
    """Check the header's fields and types; returns the tensor list with byte counts."""
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{where} is corrupt: its header is not a {FORMAT} header")
    checks = {
        "graph": (str,),
        "dtype": (str,),
        "optimizer": (str,),
        "step": (int,),
        "epoch": (int,),
        "seed": (int,),
        "lr": (int, float, type(None)),
        "tensors": (list,),
    }
    for key, types in checks.items():
        if key not in header or not isinstance(header[key], types) or isinstance(header[key], bool):
            raise CheckpointError(f"{where} is corrupt: header field {key!r} is missing or invalid")
    if header["dtype"] not in _DTYPES:
        raise CheckpointError(f"{where} is corrupt: unknown dtype {header['dtype']!r}")
    code = _DTYPES[header["dtype"]]
    out = []
    for k, t in enumerate(header["tensors"]):
        if (
            not isinstance(t, dict)
            or not isinstance(t.get("name"), str)
            or t.get("role") not in ("param", "state")
            or (t["role"] == "state") != isinstance(t.get("state"), str)
            or t.get("dtype") != code
            or not isinstance(t.get("shape"), list)
            or not all(isinstance(s, int) and s >= 0 for s in t["shape"])
            or not isinstance(t.get("offset"), int)
            or t["offset"] < 0
        ):
            raise CheckpointError(f"{where} is corrupt: tensor entry {k} of the header is invalid")
        count = math.prod(t["shape"])
        out.append({**t, "count": count, "nbytes": count * np.dtype(code).itemsize})
    return out
