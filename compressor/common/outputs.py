"""Where a command may write its output directory, how it is replaced, and Ctrl-C that waits for a write.

Used by the ``compressor`` commands, by ``runtimes.write_bundle`` and by ``benchmarks`` (``write_report``,
``python -m benchmarks``); it lives here, below both, so that benchmarking a bundle needs neither torch nor
``compressor`` (which re-exports these names from ``compressor.common.outputs`` and ``compressor.deploy._serialize``).

**The rule** (:func:`claim_output`, used by ``prune``, ``train``, ``export`` and ``bench``):

* ``--output`` may not be the current directory, one of its parents or ``/``, nor a directory
  that is or holds one of the command's inputs (the model directory, a weights file, a bundle).
  ``--force`` does not change this.
* A missing or empty directory is written.
* A directory holding the command's own earlier output is replaced: re-running a command is
  normal. A command recognises its own output by a marker file every output of it has, a JSON
  object with a given key (:data:`OUTPUT_KINDS`): ``model.json`` with ``modules`` for ``prune``
  (any saved model), ``history.json`` with ``history`` for ``train``, ``manifest.json`` with
  ``artifacts`` for ``export``, ``results.json`` with ``kind`` for ``bench``. Files added to such
  a directory by hand are replaced with it.
* Any other non-empty directory is refused unless ``force=True`` (``--force``).

The replacement itself is :func:`atomic_directory`: the new output is
written to a temporary sibling and swapped in only once complete, so a failure or Ctrl-C leaves
the old output as it was. ``train`` writes checkpoints as it goes: a new or empty directory is
trained in place (so an interrupted run can be ``--resume``'d), and ``--resume`` continues its
own output in place; otherwise it trains beside the old output and swaps. ``run`` keeps its own
rule (a run directory is resumed when its pipeline is unchanged) but shares the location check.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from compressor.common.errors import CompressorError

__all__ = ["FORCE_HELP", "OUTPUT_KINDS", "OutputKind", "OutputRefused", "atomic_directory", "check_output_location",
           "claim_output", "deferred_sigint"]

FORCE_HELP = ("replace an --output directory that holds something other than this command's earlier output "
              "(the new output is swapped in once complete)")


class OutputRefused(CompressorError, ValueError):
    """An output directory a command may not write; the message names it and says why."""


@dataclass(frozen=True)
class OutputKind:
    """How a command recognises its own earlier output: ``marker`` is a JSON object with ``key``."""

    command: str
    marker: str
    key: str

    def owns(self, directory: Path) -> bool:
        """True when ``directory`` holds this command's output (its marker file parses and has the key)."""
        try:
            data = json.loads((directory / self.marker).read_text())
        except (OSError, ValueError):  # missing, unreadable, not JSON or not UTF-8
            return False
        return isinstance(data, dict) and self.key in data


OUTPUT_KINDS: dict[str, OutputKind] = {kind.command: kind for kind in (
    OutputKind("prune", "model.json", "modules"),  # compressor.save_model's spec
    OutputKind("train", "history.json", "history"),  # written after every epoch
    OutputKind("export", "manifest.json", "artifacts"),  # runtimes.write_bundle
    OutputKind("bench", "results.json", "kind"),  # benchmarks.write_report
)}


def check_output_location(path: str | os.PathLike) -> None:
    """Refuse an output path whose replacement would take the working directory with it.

    Raises:
        OutputRefused: ``path`` is the current directory, one of its parents, or ``/``.
    """
    target = Path(path).resolve()
    cwd = Path.cwd().resolve()
    if target == Path(target.anchor):
        raise OutputRefused(f"refusing to write output directory {path}: it is the root directory")
    if target == cwd:
        raise OutputRefused(f"refusing to write output directory {path}: it is the current directory; "
                            "name a new directory, e.g. --output out")
    if target in cwd.parents:
        raise OutputRefused(f"refusing to write output directory {path}: it holds the current directory {cwd}")


def claim_output(path: str | os.PathLike, command: str, *, force: bool = False,
                 inputs: Iterable[str | os.PathLike | None] = ()) -> Literal["new", "own", "forced"]:
    """Decide whether ``command`` may write its output directory ``path`` (see the module docstring).

    Call it before any work, so a refusal costs nothing. It writes nothing.

    Args:
        path: the output directory.
        command: a key of :data:`OUTPUT_KINDS` (``"prune"``, ``"train"``, ``"export"``, ``"bench"``).
        force: replace a non-empty directory that is not the command's own output.
        inputs: paths the command reads (``None`` and non-existent paths are skipped); ``path``
            may neither be nor contain one.

    Returns:
        ``"new"`` (missing or empty), ``"own"`` (the command's earlier output) or ``"forced"``.

    Raises:
        OutputRefused: the location is refused, or the directory is foreign and not ``force``.
        KeyError: an unknown ``command``.
    """
    kind = OUTPUT_KINDS[command]
    target = Path(path)
    check_output_location(target)
    resolved = target.resolve()
    for source in inputs:
        if source is None or not Path(source).exists():
            continue
        read = Path(source).resolve()
        if read == resolved or resolved in read.parents:
            what = "is" if read == resolved else "holds"
            raise OutputRefused(f"refusing to write output directory {path}: it {what} the input {source}; "
                                "choose another --output")
    if target.exists() and not target.is_dir():
        raise OutputRefused(f"output {path} exists and is not a directory")
    if not target.exists() or not any(target.iterdir()):
        return "new"
    if kind.owns(target):
        return "own"
    if force:
        return "forced"
    raise OutputRefused(f"output directory {path} is not empty and is not the output of an earlier "
                        f"`compressor {command}` (it has no {kind.marker}); pass --force to replace it")


@contextmanager
def deferred_sigint() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) back while the block runs; then deliver it (``KeyboardInterrupt``).

    For short sections that must not stop half-way: swapping directories, writing a report whose
    measurements took minutes. A second Ctrl-C during the block is delivered once. Outside the
    main thread (where Python cannot set signal handlers), or when SIGINT's handler was not set
    from Python, the block runs unguarded. Blocks nest.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is None:
        yield
        return
    received: list[tuple[int, Any]] = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append((signum, frame)))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            signum, frame = received[0]
            if callable(previous):
                previous(signum, frame)  # default_int_handler raises KeyboardInterrupt here
            elif previous == signal.SIG_DFL:
                signal.raise_signal(signum)


def atomic_directory(path: str | os.PathLike, write: Callable[[Path], None], overwrite: bool = True) -> Path:
    """Create directory ``path`` by filling a temporary sibling with ``write`` and renaming it.

    An existing ``path`` is replaced only once ``write`` has returned. Ctrl-C is deferred while
    the temporary directory is made, swapped in and cleaned up, so a failure or an interrupt at
    any point leaves either the old directory or the new one, and no ``.NAME.tmp-*`` or
    ``.NAME.old-*`` sibling. Whether a command may replace ``path`` at all is decided before, by
    :func:`claim_output`.

    Raises:
        OutputRefused: ``path`` is the current directory, one of its parents or ``/``.
        FileExistsError: ``path`` is a file, or exists and not ``overwrite``.
    """
    target = Path(path)
    check_output_location(target)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a directory")
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists (pass overwrite=True to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp: Path | None = None
    try:
        with deferred_sigint():
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the result should look like mkdir's
        write(tmp)
        with deferred_sigint():
            _swap_in(tmp, target)
    except BaseException:
        if tmp is not None:
            with deferred_sigint():
                shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _swap_in(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``; an existing ``target`` is moved aside first and put back on failure."""
    if not target.exists():
        os.replace(new, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    try:
        os.replace(target, old / "x")
        try:
            os.replace(new, target)
        except BaseException:
            os.replace(old / "x", target)
            raise
    finally:
        if target.exists():  # the new directory or the old one put back; else keep the old one to recover
            shutil.rmtree(old, ignore_errors=True)
