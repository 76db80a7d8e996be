"""Root containment for local files: which paths the knowledge base may read, and reading them safely.

The rule (reliability plan 5.5, CVE-2025-53109 and -53110): a path is resolved with every symlink
followed, then must sit inside an allowed root component-wise (`Path.is_relative_to`, so a
sibling `/srv/kb-evil` never passes for the root `/srv/kb`). The file is then opened with
`O_NOFOLLOW | O_NONBLOCK` (a symlink swapped in after the check fails to open, a FIFO does not
block), `fstat`ed on the descriptor (only regular files: no device, FIFO or socket is ever read)
and the descriptor's own path is re-checked under the roots (`/proc/self/fd`), so a parent
directory swapped for a symlink between check and open is caught too.

Hard links cannot be told apart from the file they link to by path, so a regular file with more
than one link is refused: a hard link inside a root to a secret outside it would otherwise be
read. Copy such a file into the root instead.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from session_mcp.models.errors import InvalidArgument, LimitExceeded, PathNotAllowed

MAX_PATH_CHARS = 4096


def root_from_uri(uri: str) -> Path | None:
    """A client root (`file:///home/me/project`) as a path; None for any other scheme."""
    parts = urlsplit(uri)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        return None
    return Path(unquote(parts.path))


@dataclass(frozen=True)
class Roots:
    """The directories that may be read, each resolved once (symlinks followed)."""

    paths: tuple[Path, ...]

    @classmethod
    def of(cls, candidates: Sequence[Path]) -> Roots:
        resolved: list[Path] = []
        for candidate in candidates:
            path = Path(os.path.realpath(candidate))
            if path not in resolved:
                resolved.append(path)
        return cls(tuple(resolved))

    def describe(self) -> str:
        return ", ".join(str(p) for p in self.paths) or "(none)"

    def contains(self, resolved: Path) -> bool:
        return any(resolved == root or resolved.is_relative_to(root) for root in self.paths)

    def refuse(self, shown: str, why: str = "is outside the allowed roots") -> PathNotAllowed:
        return PathNotAllowed(
            f"'{shown}' {why} ({self.describe()}); use a file inside one of them, or ask the "
            "user to add its folder as a client root or to SESSION_MCP_KNOWLEDGE_ROOTS"
        )

    def resolve(self, raw: str) -> Path:
        """The real path `raw` names, checked to lie inside a root (it may not exist)."""
        if "\x00" in raw:
            raise InvalidArgument("the path contains a NUL character; send the file's real path")
        if len(raw) > MAX_PATH_CHARS:
            raise InvalidArgument(f"the path is {len(raw)} characters, over {MAX_PATH_CHARS}; shorten it")
        if raw.startswith("file:"):
            as_uri = root_from_uri(raw)
            if as_uri is None:
                raise self.refuse(raw)
            raw = str(as_uri)
        if not self.paths:
            raise self.refuse(raw, "cannot be read because no roots are allowed")
        given = Path(raw)
        if given.is_absolute():
            candidates = [given]
        else:  # relative to the first root that has it, else to the first root
            candidates = [root / given for root in self.paths]
            candidates = [c for c in candidates if os.path.lexists(c)] or [self.paths[0] / given]
        resolved = Path(os.path.realpath(candidates[0]))
        if not self.contains(resolved):
            raise self.refuse(raw)
        return resolved

    def read_file(self, path: Path, shown: str, max_bytes: int) -> bytes:
        """The bytes of the regular file at resolved `path`, read through one checked descriptor."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            raise InvalidArgument(
                f"no file '{shown}' exists; check the path (knowledge_list shows what is stored)"
            ) from None
        except OSError as exc:  # ELOOP: swapped for a symlink; ENXIO: a socket; EACCES
            raise self.refuse(shown, f"cannot be opened ({exc.strerror})") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise self.refuse(shown, "is not a regular file (a device, FIFO, socket or directory)")
            if info.st_nlink > 1:
                raise self.refuse(shown, "is a hard link, which could lead outside the roots; copy the file")
            self._recheck(fd, shown)
            if info.st_size > max_bytes:
                raise LimitExceeded(
                    f"'{shown}' is {info.st_size} bytes, over the file limit of {max_bytes}; "
                    "split it or ask the user to raise SESSION_MCP_KNOWLEDGE_MAX_FILE_BYTES"
                )
            os.set_blocking(fd, True)
            chunks: list[bytes] = []
            remaining = max_bytes + 1
            while remaining > 0 and (block := os.read(fd, min(remaining, 1 << 20))):
                chunks.append(block)
                remaining -= len(block)
            data = b"".join(chunks)
            if len(data) > max_bytes:  # it grew after fstat
                raise LimitExceeded(f"'{shown}' is over the file limit of {max_bytes} bytes; split it")
            return data
        finally:
            os.close(fd)

    def _recheck(self, fd: int, shown: str) -> None:
        link = f"/proc/self/fd/{fd}"
        if os.path.exists(link) and not self.contains(Path(os.readlink(link))):
            raise self.refuse(shown)

    def walk(self, directory: Path) -> Iterator[Path]:
        """Files under a resolved directory, sorted, skipping hidden entries and never following
        symlinked directories; each file is still checked by `read_file`'s caller via `resolve`."""
        for current, dirs, files in os.walk(directory, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if not name.startswith("."):
                    yield Path(current) / name
