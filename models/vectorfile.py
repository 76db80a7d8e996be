"""The on-disk format of a scope's HNSW index: one checksummed file, written atomically.

Owned by models/vectors.py, which decides when to write and read; this module decides how.
One file per scope, `<sha256(scope)[:32]>.usearch`, laid out as

    usearch bytes | header JSON | u32 big-endian header length | sha256(header) | b"SMCPVEC2"

with header {format, scope, watermark, count, dim, size and sha256 of the usearch bytes}. The
header is a trailer so usearch can save straight to the temp file's path (no copy of the index in
memory), after which the file is hashed by streaming it and the trailer appended. One file means
one atomic `os.replace` (temp file in the same directory, fsync, replace, fsync directory), so
index and metadata never disagree. usearch loads a file with a flipped byte silently, so both
checksums are verified before the bytes reach it; reading maps the file instead of copying it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import mmap
import os
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from session_mcp.models.vectorstores import HnswStore

log = logging.getLogger("session_mcp.vectors")
MAGIC = b"SMCPVEC2"
FORMAT = 3
"""3: int8 vectors in the index (vectorstores.HnswStore); a file of an older format is rebuilt."""
SUFFIX = ".usearch"
_TAIL = 4 + 32 + len(MAGIC)
_HASH_CHUNK = 1 << 20
_STALE_TEMP_S = 3600.0


def path_for(directory: Path, scope: str) -> Path:
    return directory / f"{hashlib.sha256(scope.encode()).hexdigest()[:32]}{SUFFIX}"


def write(path: Path, save_body: Callable[[str], object], meta: dict[str, Any]) -> None:
    """Write `meta` plus the bytes `save_body(temp_path)` puts in a file; raises OSError/RuntimeError."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        save_body(tmp)
        with open(tmp, "r+b") as f:
            digest, size = hashlib.sha256(), 0
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
                size += len(chunk)
            header = json.dumps(
                {"format": FORMAT, **meta, "size": size, "sha256": digest.hexdigest()}, separators=(",", ":")
            ).encode()
            f.write(header + struct.pack(">I", len(header)) + hashlib.sha256(header).digest() + MAGIC)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if os.name != "nt":  # directories cannot be opened for fsync on Windows
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


@contextlib.contextmanager
def read(path: Path) -> Iterator[tuple[dict[str, Any], memoryview]]:
    """Yield (header, usearch bytes) of an intact file, mapped, not copied; ValueError if damaged.

    FileNotFoundError and other OSErrors pass through. The view is only valid inside the block.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < _TAIL:
            raise ValueError("not a session-mcp vector index file")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    views: list[memoryview] = []  # every view of the map must be released before it closes

    def part(lo: int, hi: int) -> memoryview:
        views.append(memoryview(mm)[lo:hi])
        return views[-1]

    try:
        tail = part(size - _TAIL, size)
        if bytes(tail[-len(MAGIC) :]) != MAGIC:
            raise ValueError("not a session-mcp vector index file (or an older format)")
        (hlen,) = struct.unpack(">I", tail[:4])
        start = size - _TAIL - hlen
        if start < 0:
            raise ValueError("header length past the start of the file")
        header = mm[start : size - _TAIL]
        if hashlib.sha256(header).digest() != bytes(tail[4:36]):
            raise ValueError("header checksum mismatch")
        meta: dict[str, Any] = json.loads(header)
        body = part(0, start)
        if meta.get("format") != FORMAT:
            raise ValueError(f"written in format {meta.get('format')}, this version reads format {FORMAT}")
        if meta.get("size") != len(body):
            raise ValueError("size differs from the header")
        if hashlib.sha256(body).hexdigest() != meta.get("sha256"):
            raise ValueError("index checksum mismatch")
        yield meta, body
    finally:
        for v in views:
            v.release()
        mm.close()


def sweep_temp_files(directory: Path) -> None:
    """Remove temp files of saves that died mid-write; young ones may be another process's."""
    cutoff = time.time() - _STALE_TEMP_S
    for p in directory.glob(f"*{SUFFIX}.*.tmp"):
        with contextlib.suppress(OSError):
            if p.stat().st_mtime < cutoff:
                p.unlink()


def save_index(directory: Path, scope: str, hnsw: HnswStore, watermark: int, dim: int) -> bool:
    """Write the scope's file; False (logged) if that failed: a cache that cannot be saved is rebuilt."""
    path = path_for(directory, scope)
    try:
        write(path, hnsw.index.save, {"scope": scope, "watermark": watermark, "count": len(hnsw), "dim": dim})
        return True
    except (OSError, RuntimeError) as e:
        log.warning("could not save the vector index of a scope to %s: %s", path, e)
        return False


def load_index(directory: Path, scope: str, dim: int, max_seq: int) -> HnswStore | None:
    """The scope's index if its file exists, is intact and is not ahead of the database, else None."""
    path = path_for(directory, scope)
    try:
        with read(path) as (meta, body):
            if meta.get("scope") != scope or meta.get("dim") != dim:
                raise ValueError("file belongs to another scope or dimension")
            if int(meta["watermark"]) > max_seq:  # maybe a file that outlived its database
                log.info("vector index file %s is ahead of the database; rebuilding", path)
                return None
            hnsw = HnswStore(dim, body)
        if len(hnsw) != meta["count"]:
            raise ValueError("vector count differs from the header")
        return hnsw
    except FileNotFoundError:
        return None
    except Exception as e:  # any damage means "rebuild"; a bad cache file never reaches the caller
        log.warning("vector index file %s is unusable (%s); rebuilding from the database", path, e)
        return None


def unlink(directory: Path, scope: str) -> None:
    try:
        path_for(directory, scope).unlink(missing_ok=True)
    except OSError as e:
        log.warning("could not delete a vector index file: %s", e)
