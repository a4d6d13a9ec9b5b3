"""Artifact files: checks that name the file at fault, and writes that never leave half a file."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from compressor.common.errors import ArtifactError


def require_file(path: Path, what: str, suffixes: tuple[str, ...] = ()) -> Path:
    """Return ``path`` if it is a non-empty file (with one of ``suffixes``), else raise ArtifactError."""
    if suffixes and path.suffix.lower() not in suffixes:
        got = repr(path.suffix) if path.suffix else "no suffix"
        raise ArtifactError(f"{path}: expected {what} ({' or '.join(suffixes)} file), got {got}")
    if not path.exists():
        raise ArtifactError(f"{path}: {what} not found")
    if not path.is_file():
        raise ArtifactError(f"{path}: expected {what} file, found a directory or special file")
    if path.stat().st_size == 0:
        raise ArtifactError(f"{path}: {what} is empty (0 bytes)")
    return path


def short_error(err: BaseException) -> str:
    """``Type: last meaningful line`` of an SDK exception, without the C++ source locations."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else '(no message)'}"


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Create or replace the file ``path`` with what ``write(tmp_path)`` writes, all or nothing.

    ``write`` fills a temporary file in the same directory, which is then renamed over ``path``;
    on any failure (Ctrl-C included) the temporary file is removed and ``path`` is untouched. The
    file gets the permissions a plain ``open(path, "w")`` would (mkstemp's are private). This is the
    project's one file writer: JSON reports, manifests, checkpoints (``torch.save`` as ``write``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_write`, flushed to disk before the rename."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    atomic_write(path, write)


@contextlib.contextmanager
def staging_dir(out_dir: Path) -> Iterator[Path]:
    """A temporary directory inside ``out_dir`` (same filesystem, so its files can be renamed into
    place with :func:`os.replace`); removed on exit, whether the build succeeded or not."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def file_sha256(path: Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_versioned_json(path: Path, *, kind: str, schema_version: int, error: type[Exception]) -> dict[str, Any]:
    """Load a JSON document with a ``schema_version``; every failure raises ``error`` naming the file."""
    if not path.is_file():
        raise error(f"{path.parent} is not a {kind}: {path} is missing")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path} is not valid JSON: {exc}") from exc
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != schema_version:
        raise error(f"{path} has schema_version {version!r}; this version reads {schema_version}")
    return data
