"""The on-disk dataset: one file, a JSON header, then flat arrays read with numpy.memmap.

Layout:  MAGIC (8 bytes) | header length (uint64 LE) | header JSON | padding | arrays...
Each array starts at a 64-byte aligned offset recorded in the header. A ragged field `f` (one
variable-length list per instance) is stored as `f` (all values, concatenated) and `f.offsets`
(int64, instances + 1), or uses the offsets of another ragged field with the same lengths; a
fixed field is `width` values per instance; a shared field is one free-length array that
instances point into (the token store). Nothing is padded. The file is assembled under a
temporary name and renamed when complete.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass

import numpy as np

from uer.errors import UerError
from uer.utils import atomic_path, owned_temp_dir

MAGIC = b"UERDSET\x00"
FORMAT_VERSION = 2
ALIGN = 64


@dataclass(frozen=True)
class Field:
    name: str
    ragged: bool
    dtype: str  # numpy dtype name
    width: int = 1  # values per instance of a fixed field
    shared: bool = False  # one free-length array, not per instance
    offsets_of: str | None = None  # a ragged field read through another ragged field's offsets

    @property
    def offsets(self) -> str:
        return (self.offsets_of or self.name) + ".offsets"


class DatasetWriter:
    """Collects chunks of instances (in order) into per-array spill files, then assembles the
    dataset file atomically. Memory use is one chunk at a time."""

    def __init__(self, path: str, fields: list[Field]):
        self.path = path
        self.fields = fields
        self.count = 0
        directory = os.path.dirname(os.path.abspath(path)) or "."
        os.makedirs(directory, exist_ok=True)
        self._tmpdir = owned_temp_dir(".uer-dataset-", directory)
        self._files = {}
        self._ragged_total = {f.name: 0 for f in fields if f.ragged}
        for f in fields:
            self._files[f.name] = open(os.path.join(self._tmpdir, f.name), "wb")
            if f.ragged and not f.offsets_of:
                off = open(os.path.join(self._tmpdir, f.offsets), "wb")
                np.zeros(1, dtype=np.int64).tofile(off)
                self._files[f.offsets] = off

    def add(self, chunk: dict[str, np.ndarray]) -> None:
        """chunk[name] is the values array; for ragged fields chunk[name + '.lengths'] too."""
        n = None
        for f in self.fields:
            values = np.asarray(chunk[f.name]).astype(f.dtype, copy=False)
            if f.shared:
                values.tofile(self._files[f.name])
                continue
            if f.ragged:
                lengths = np.asarray(chunk[f.name + ".lengths"], dtype=np.int64)
                assert lengths.sum() == len(values), f"{f.name}: lengths do not match values"
                if f.offsets_of:
                    assert np.array_equal(lengths, chunk[f.offsets_of + ".lengths"]), f"{f.name}: lengths differ"
                else:
                    offs = self._ragged_total[f.name] + np.cumsum(lengths)
                    offs.tofile(self._files[f.offsets])
                    self._ragged_total[f.name] = int(offs[-1]) if len(offs) else self._ragged_total[f.name]
                k = len(lengths)
            else:
                assert len(values) % f.width == 0, f"{f.name}: not {f.width} values an instance"
                k = len(values) // f.width
            n = k if n is None else n
            assert n == k, f"field {f.name} has {k} instances, expected {n}"
            values.tofile(self._files[f.name])
        self.count += n or 0

    def finish(self, header: dict) -> dict:
        for fh in self._files.values():
            fh.close()
        arrays = {}
        names = []
        for f in self.fields:
            names.append((f.name, f.dtype))
            if f.ragged and not f.offsets_of:
                names.append((f.offsets, "int64"))
        header = dict(header, format="uer-dataset", version=FORMAT_VERSION, instances=self.count)
        # Offsets depend on the header size, which depends on the offsets: settle them with a
        # fixed-width header (padded with spaces) big enough for any value.
        sizes = {name: os.path.getsize(os.path.join(self._tmpdir, name)) for name, _ in names}
        header_room = len(json.dumps(header, ensure_ascii=False).encode()) + 200 * len(names) + 256
        pos = _align(len(MAGIC) + 8 + header_room)
        for name, dtype in names:
            nbytes = sizes[name]
            arrays[name] = {"dtype": dtype, "offset": pos, "length": nbytes // np.dtype(dtype).itemsize}
            pos = _align(pos + nbytes)
        for f in self.fields:
            arrays[f.name]["kind"] = "shared" if f.shared else "ragged" if f.ragged else "fixed"
            if f.offsets_of:
                arrays[f.name]["offsets"] = f.offsets
            if f.width > 1:
                arrays[f.name]["width"] = f.width
        header["arrays"] = arrays
        header["total_bytes"] = pos
        blob = json.dumps(header, ensure_ascii=False).encode("utf-8")
        assert len(blob) <= header_room
        blob = blob + b" " * (header_room - len(blob))
        try:
            with atomic_path(self.path) as tmp:
                with open(tmp, "wb") as out:
                    out.write(MAGIC)
                    out.write(np.uint64(header_room).tobytes())
                    out.write(blob)
                    for name, _ in names:
                        out.seek(arrays[name]["offset"])
                        with open(os.path.join(self._tmpdir, name), "rb") as src:
                            shutil.copyfileobj(src, out, 1 << 22)
                    out.truncate(pos)
        finally:
            self.abort()
        return header

    def abort(self) -> None:
        for fh in self._files.values():
            if not fh.closed:
                fh.close()
        shutil.rmtree(self._tmpdir, ignore_errors=True)


def _align(x: int) -> int:
    return (x + ALIGN - 1) // ALIGN * ALIGN


def read_header(path: str) -> dict:
    if not os.path.isfile(path):
        raise UerError(f"dataset not found: {path} (build it with preprocess.py)")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        magic = f.read(len(MAGIC))
        if magic != MAGIC:
            raise UerError(f"{path} is not a uer dataset (it does not start with the dataset "
                           "signature); build it with this version's preprocess.py")
        raw_len = f.read(8)
        if len(raw_len) < 8:
            raise UerError(f"dataset {path} is truncated (incomplete header)")
        hlen = int(np.frombuffer(raw_len, dtype=np.uint64)[0])
        blob = f.read(hlen)
    if len(blob) < hlen:
        raise UerError(f"dataset {path} is truncated (incomplete header)")
    try:
        header = json.loads(blob.decode("utf-8"))
    except ValueError:
        raise UerError(f"dataset {path} has a corrupted header") from None
    if header.get("version") != FORMAT_VERSION:
        raise UerError(f"dataset {path} has format version {header.get('version')}, this version "
                       f"reads version {FORMAT_VERSION}: rebuild it with preprocess.py")
    if size != header.get("total_bytes"):
        raise UerError(f"dataset {path} is truncated or corrupted: {size} bytes on disk, the "
                       f"header says {header.get('total_bytes')}")
    problems = header_problems(header, len(MAGIC) + 8 + hlen)
    if problems:
        raise UerError(f"dataset {path} has a damaged header: " + "; ".join(problems[:10])
                       + ". Rebuild it with preprocess.py")
    return header


#: header fields every reader relies on, and their types
REQUIRED = {"instances": int, "arrays": dict, "target": str, "seq_length": int, "vocab_size": int,
            "vocab_fingerprint": str, "dynamic_masking": bool, "span_masking": bool}
DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float32")


def header_problems(header: dict, arrays_start: int) -> list[str]:
    """What an edited or damaged header gets wrong, checked against the arrays it describes before
    any is read (a count of instances beyond the arrays would make every batch wait forever)."""
    p = [f"{k} is {'missing' if k not in header else repr(header[k])}, expected {t.__name__}"
         for k, t in REQUIRED.items() if type(header.get(k)) is not t]
    if p:
        return p
    n = header["instances"]
    if n < 0:
        return [f"instances is {n}"]
    arrays = header["arrays"]
    for name, spec in arrays.items():
        if not isinstance(spec, dict) or spec.get("dtype") not in DTYPES or not all(
                type(spec.get(k)) is int for k in ("offset", "length")):
            p.append(f"array {name!r}: {spec!r} is not an array of one of {', '.join(DTYPES)} with an offset and "
                     "a length")
            continue
        end = spec["offset"] + spec["length"] * np.dtype(spec["dtype"]).itemsize
        if spec["offset"] < arrays_start or spec["length"] < 0 or end > header["total_bytes"]:
            p.append(f"array {name!r} (offset {spec['offset']}, {spec['length']} values) lies outside the file's "
                     f"arrays (bytes {arrays_start} to {header['total_bytes']})")
        width = spec.get("width", 1)
        if name.endswith(".offsets") and spec["length"] != n + 1:
            p.append(f"{n} instances, but array {name!r} has the offsets of {spec['length'] - 1}")
        elif spec.get("kind") == "fixed" and spec["length"] != n * width:
            p.append(f"{n} instances, but array {name!r} holds {spec['length']} values, {width} an instance")
        if "offsets" in spec and spec["offsets"] not in arrays:
            p.append(f"array {name!r} reads through offsets {spec['offsets']!r}, which the file does not have")
    return p


class Dataset:
    """Read-only, memory-mapped view of a dataset file."""

    def __init__(self, path: str):
        self.path = path
        self.header = read_header(path)
        self._fd = None
        self.arrays: dict[str, np.ndarray] = {}
        specs = self.header["arrays"]
        self._offsets = {name: spec.get("offsets", name + ".offsets") for name, spec in specs.items()}
        self._width = {name: spec.get("width", 1) for name, spec in specs.items()}
        for name, spec in specs.items():
            if spec["length"] == 0:
                self.arrays[name] = np.zeros(0, dtype=spec["dtype"])
            else:
                self.arrays[name] = np.memmap(path, dtype=spec["dtype"], mode="r",
                                              offset=spec["offset"], shape=(spec["length"],))

        for name, spec in specs.items():  # each ragged field's offsets span exactly its values
            offsets = self.arrays.get(self._offsets[name]) if not name.endswith(".offsets") else None
            if offsets is not None and len(offsets) and (int(offsets[0]) != 0 or int(offsets[-1]) != spec["length"]):
                raise UerError(f"dataset {path} is corrupted: the offsets of array {name!r} run from "
                               f"{int(offsets[0])} to {int(offsets[-1])}, but it holds {spec['length']} values. "
                               "Rebuild it with preprocess.py")

    def __len__(self) -> int:
        return int(self.header["instances"])

    def read(self, name: str, a: int, b: int) -> np.ndarray:
        """Values a..b-1 of an array, read with pread rather than through the mapping: pages
        touched through a mapping stay in the process (with the kernel's fault-around, 64 KB for
        each instance read at random), so its memory would grow towards the dataset's size."""
        values = self.arrays[name]  # a memmap: its dtype, and its offset in the file
        if b <= a:
            return np.zeros(0, dtype=values.dtype)
        size = values.dtype.itemsize
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        data = os.pread(self._fd, (b - a) * size, values.offset + a * size)
        return np.frombuffer(data, dtype=values.dtype)

    def ragged(self, name: str, i: int) -> np.ndarray:
        """Instance i's values of a ragged field."""
        off = self.arrays[self._offsets[name]]
        return self.read(name, int(off[i]), int(off[i + 1]))

    def rows(self, name: str, indices) -> np.ndarray:
        """[len(indices), width] values of a fixed field, int64."""
        w = self._width[name]
        out = np.empty((len(indices), w), dtype=np.int64)
        for r, i in enumerate(indices):
            out[r] = self.read(name, int(i) * w, (int(i) + 1) * w)
        return out

    def __getstate__(self):
        return {**self.__dict__, "_fd": None}

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

