"""The files we write atomically reach the disk in the one safe order, seen in the system calls.

kill -9 cannot test this: the kernel keeps what a killed process wrote. What power loss keeps is
decided by the order of the calls (the reliability plan's R6): the new bytes are written and
fsynced under a temporary name, the name is swapped in with rename, and the directory is fsynced
so that the rename itself is on disk. strace records the calls of a child that saves a vector
index file and the model cache's file; each must show exactly that order.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

STRACE = shutil.which("strace")
pytestmark = pytest.mark.skipif(STRACE is None, reason="strace is not installed")

_CALL = re.compile(r"^(?:\[pid\s+)?\d+\]?\s+(\w+)\((.*)\)\s+=\s+(-?\d+)")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Call:
    name: str
    paths: tuple[str, ...]
    """The paths named or, for a call on a descriptor, the path that descriptor was opened on."""


def traced(code: str, under: Path) -> list[Call]:
    """The file calls on paths under `under` that `python -c code` made, in order."""
    assert STRACE is not None
    log = under.parent / "strace.log"
    calls = "openat,open,write,pwrite64,fsync,fdatasync,close,rename,renameat,renameat2"
    subprocess.run(
        [STRACE, "-f", "-qq", "-e", f"trace={calls}", "-o", str(log), sys.executable, "-c", code],
        check=True,
        timeout=120,
        capture_output=True,
    )
    fds: dict[str, str] = {}
    found: list[Call] = []
    for line in log.read_text().splitlines():
        match = _CALL.match(line)
        if not match or int(match.group(3)) < 0:
            continue
        name, args, result = match.groups()
        named = tuple(_QUOTED.findall(args))
        if name in ("openat", "open"):
            if named and named[0].startswith(str(under)):
                fds[result] = named[0]
                found.append(Call("open", named[:1]))
            continue
        fd = args.split(",", 1)[0].strip()
        if name == "close":
            fds.pop(fd, None)
        elif name.startswith("rename"):
            if any(path.startswith(str(under)) for path in named):
                found.append(Call("rename", named[:2]))
        elif fd in fds:
            found.append(Call("fsync" if "sync" in name else "write", (fds[fd],)))
    return found


def assert_written_safely(calls: list[Call], target: Path) -> None:
    renames = [i for i, c in enumerate(calls) if c.name == "rename" and c.paths[1] == str(target)]
    assert len(renames) == 1, f"one rename onto {target} expected: {calls}"
    at = renames[0]
    temp = calls[at].paths[0]
    assert Path(temp).parent == target.parent and temp != str(target)
    before = calls[:at]
    writes = [i for i, c in enumerate(before) if c.name == "write" and c.paths == (temp,)]
    syncs = [i for i, c in enumerate(before) if c.name == "fsync" and c.paths == (temp,)]
    assert writes, f"nothing written to the temporary file {temp}: {calls}"
    assert syncs and syncs[-1] > writes[-1], (
        f"the temporary file's last write was not fsynced before the rename: {calls}"
    )
    after = calls[at + 1 :]
    assert Call("fsync", (str(target.parent),)) in after, (
        f"the directory was not fsynced after the rename: {calls}"
    )
    assert not any(c.paths == (temp,) for c in after), (
        f"the temporary file was used after the rename: {calls}"
    )


def test_a_vector_index_file_is_written_fsynced_renamed_and_its_directory_fsynced(tmp_path: Path) -> None:
    folder = tmp_path / "indexes"
    folder.mkdir()
    code = (
        "import numpy\n"
        "from pathlib import Path\n"
        "from session_mcp.models import embedder  # loads onnxruntime first, as the server does\n"
        "from session_mcp.models.vectorfile import save_index\n"
        "from session_mcp.models.vectorstores import HnswStore\n"
        "store = HnswStore(8)\n"
        "store.add(numpy.arange(1, 51, dtype=numpy.uint64), numpy.random.default_rng(1).random((50, 8), dtype=numpy.float32))\n"
        f"assert save_index(Path({str(folder)!r}), 'long:alice', store, 50, 8)\n"
    )
    calls = traced(code, folder)
    from session_mcp.models.vectorfile import path_for

    assert_written_safely(calls, path_for(folder, "long:alice"))


def test_the_prepared_model_file_is_written_fsynced_renamed_and_its_directory_fsynced(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    target = folder / "model.onnx"
    code = (
        "from pathlib import Path\n"
        "from session_mcp.models.embedder import _atomic_write\n"
        f"_atomic_write(Path({str(target)!r}), b'x' * 100_000)\n"
    )
    assert_written_safely(traced(code, folder), target)
    assert target.read_bytes() == b"x" * 100_000
