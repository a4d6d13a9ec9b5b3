"""Deployable bundles: ONNX + runtime artifacts + a manifest, each artifact verified for parity.

A bundle directory holds ``model.onnx``, ``openvino/model.xml`` + ``.bin``,
``tensorrt/model.engine`` and ``torch/`` (the folded PyTorch model as saved by
``compressor.save_model``, for the eager reference runtime) when requested, and ``manifest.json`` with the input spec, the
package versions, the caller's extra facts (cost, pruning recipe ...), the parity report and
the sha256 of every file. A model with several outputs (a detector's raw heads) has each one
recorded (``outputs``: name and shape) and checked for parity. It is written to a temporary
directory and renamed into place; a
runtime that is missing is detected before anything is written. A parity failure is recorded
in the manifest and raised; :func:`load_bundle` refuses such a bundle unless told otherwise, and
checks the manifest's claims against the files (:mod:`runtimes._manifest_check`).
"""
from __future__ import annotations

import importlib.metadata
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from compressor.common.files import file_sha256 as _sha256, read_versioned_json
from runtimes._parity import compare_outputs, floors_for, ParityError, ParityResult
from compressor.common.outputs import atomic_directory
from runtimes._base import RuntimeUnavailable, SessionConfig, get_runtime
from runtimes._manifest_check import MANIFEST, SCHEMA_VERSION, TARGET_RUNTIME, BundleError, verify_manifest
from runtimes._onnx import read_onnx

Outputs = np.ndarray | Sequence[np.ndarray] | Mapping[str, np.ndarray]

_PACKAGES = ("torch", "onnx", "onnxruntime", "openvino", "tensorrt", "cnn-compressor")


@dataclass(frozen=True)
class BundleConfig:
    targets: tuple[str, ...] = ("onnx", "openvino")
    precision: str = "fp32"
    batch_sizes: tuple[int, ...] = (1, 8)  # parity is checked at each
    device: str = "cpu"  # for onnxruntime/openvino; TensorRT always runs on CUDA
    threads: int | None = None
    min_batch: int = 1  # TensorRT optimisation profile
    opt_batch: int = 8
    max_batch: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [t for t in self.targets if t not in TARGET_RUNTIME]
        if unknown or not self.targets:
            raise ValueError(f"unknown export targets {unknown or '(none)'}; choose from {sorted(TARGET_RUNTIME)}")
        if self.precision not in ("fp32", "fp16", "int8"):
            raise ValueError(f"precision must be 'fp32', 'fp16' or 'int8', got {self.precision!r}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch_sizes must be positive, got {self.batch_sizes}")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(f"need 1 <= min_batch <= opt_batch <= max_batch, got {self.min_batch}, "
                             f"{self.opt_batch}, {self.max_batch}")


@dataclass
class Bundle:
    """A bundle directory and its manifest.

    ``unchecked`` lists the manifest claims :func:`load_bundle` could not check against the files
    (e.g. the FLOPs of a graph with dynamic shapes); empty when everything was checked.
    """

    path: Path
    manifest: dict[str, Any]
    parity: list[dict[str, Any]] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)

    def artifact(self, target: str) -> Path:
        try:
            return self.path / self.manifest["artifacts"][target]
        except KeyError:
            raise BundleError(f"bundle {self.path} has no {target!r} artifact; it has "
                              f"{sorted(self.manifest.get('artifacts', {}))}") from None


def package_versions(packages: tuple[str, ...] = _PACKAGES) -> dict[str, str | None]:
    """The installed version of each distribution, None where it is not installed."""
    out: dict[str, str | None] = {}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _as_outputs(value: Outputs) -> list[np.ndarray]:
    """A reference's result as a list of arrays: one array, a sequence of them, or a dict (in its order)."""
    if isinstance(value, np.ndarray):
        return [value]
    items = list(value.values()) if isinstance(value, Mapping) else list(value)
    if not items or not all(isinstance(v, np.ndarray) for v in items):
        raise TypeError(f"the reference returns numpy arrays (one, a sequence or a dict of them), got "
                        f"{[type(v).__name__ for v in items] or type(value).__name__}")
    return items


def _in_order(session: Any, outputs: list[np.ndarray], names: list[str]) -> list[np.ndarray]:
    """A session's outputs in the ONNX graph's order: by name where the session has the graph's names
    (an engine may list them in its own order), else as they come (torch names tuple outputs itself)."""
    own = session.output_names
    if own is None or len(own) != len(outputs) or sorted(own) != sorted(names) or own == names:
        return outputs
    by_name = dict(zip(own, outputs))
    return [by_name[n] for n in names]


def _declared_shape(outputs: dict[int, np.ndarray]) -> list[int | str]:
    """An output's shape for the manifest: dim 0 is "batch" where it followed every parity batch size."""
    first = next(iter(outputs.values()))
    tracks = first.ndim > 0 and all(out.ndim > 0 and out.shape[0] == bs for bs, out in outputs.items())
    return ["batch" if tracks else int(first.shape[0]), *map(int, first.shape[1:])] if first.ndim else []


def _copy_artifact(built: Path, dest_dir: Path) -> Path:
    """Copy a prebuilt artifact and its side files (an IR's .bin, an engine's .json, external
    weights: the files named ``<stem>.*`` beside it) into ``dest_dir``."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    for file in sorted(built.parent.glob(built.stem + ".*")):
        if file.is_file():
            shutil.copyfile(file, dest_dir / file.name)
    return dest_dir / built.name


def _over_batches(run: Callable[[np.ndarray], list[np.ndarray]], batches: list[np.ndarray]) -> list[np.ndarray]:
    """Every output of ``run`` over ``batches``, each concatenated along the batch dim."""
    return [np.concatenate(parts) for parts in zip(*(run(x) for x in batches))]


def write_bundle(onnx_file: str | Path, out_dir: str | Path, reference: Callable[[np.ndarray], Outputs],
                 input_shape: tuple[int, ...], config: BundleConfig = BundleConfig(),
                 extra: dict[str, Any] | None = None, progress: Callable[[str], None] | None = None,
                 torch_model_dir: str | Path | None = None, *,
                 prebuilt: Mapping[str, tuple[str | Path, str]] | None = None,
                 held_out: np.ndarray | None = None, floors: dict[str, float] | None = None) -> Bundle:
    """Build every target's artifact from ``onnx_file``, verify parity, and write the bundle.

    Args:
        onnx_file: the exported model (dynamic batch axis).
        out_dir: bundle directory, replaced atomically.
        reference: the PyTorch model as a function of a float32 numpy batch, returning its output
            array, or for a model with several outputs a list (or dict) of arrays in the order of
            the ONNX graph's outputs.
        input_shape: one sample's shape (C, H, W).
        config: targets, precision, parity batch sizes, TensorRT profile.
        extra: more manifest entries (cost, pruning recipe, ONNX export facts ...).
        progress: called with a short message before each long step.
        torch_model_dir: a directory written by ``compressor.save_model`` (the same model as
            ``reference``); needed for the ``"torch"`` target, copied to ``torch/``.
        prebuilt: ``{target: (artifact path, precision)}``: artifacts already built (an INT8
            build chosen by the accuracy budget and the speed guard, or its FP32 fallback),
            copied in instead of built; the manifest's ``artifact_precision`` records each
            target's precision.
        held_out: real input samples (not calibration data) on which INT8 artifacts are
            compared with the reference; required when an artifact is INT8.
        floors: INT8's parity floors ``{"cosine": .., "top1_agreement": ..}`` (default 0.99 and
            0.98), recorded under ``int8.floors``.

    Raises:
        RuntimeUnavailable: a target's runtime (package or device) is missing; nothing written.
        ArtifactError: a runtime could not build or load an artifact.
        ParityError: an artifact's outputs differ (any of them; the message names it); the bundle
            is written with the failure.
        ValueError: the reference returns another number of outputs than the ONNX graph has.
    """

    say = progress or (lambda message: None)
    if "torch" in config.targets:
        if torch_model_dir is None or not (Path(torch_model_dir) / "model.json").is_file():
            raise ValueError(f"the 'torch' target needs torch_model_dir, a directory saved by compressor.save_model; "
                             f"got {torch_model_dir!r}")
    runtimes = {t: get_runtime(TARGET_RUNTIME[t]) for t in config.targets}
    prebuilt = dict(prebuilt or {})
    # an INT8 bundle's torch target is the folded FP32 model (PyTorch has no INT8 artifact here)
    precisions = {t: prebuilt[t][1] if t in prebuilt else "fp32" if (t, config.precision) == ("torch", "int8")
                  else config.precision for t in config.targets}
    if "int8" in precisions.values() and (held_out is None or len(held_out) == 0):
        raise ValueError("INT8 artifacts are checked on held-out samples; pass held_out (real inputs, not the "
                         "calibration set)")
    unbuilt = [t for t, p in precisions.items() if p == "int8" and t not in prebuilt]
    if unbuilt:
        raise ValueError(f"INT8 artifacts are built from calibration data before the bundle is written; give "
                         f"prebuilt artifacts for {unbuilt}")
    for target, runtime in runtimes.items():
        device = "cuda" if target == "tensorrt" else config.device
        reason = runtime.is_available(device=device)
        if reason:
            raise RuntimeUnavailable(f"cannot export to {target}: {reason}")
    results: list[ParityResult] = []
    manifest: dict[str, Any] = {}

    def write(tmp: Path) -> None:
        onnx_path = tmp / "model.onnx"
        shutil.copyfile(onnx_file, onnx_path)
        artifacts = {}
        for target, runtime in runtimes.items():
            say(f"building {target}")
            if target == "torch":
                shutil.copytree(torch_model_dir, tmp / "torch")
                artifacts[target] = "torch"
                continue
            if target in prebuilt:
                copied = _copy_artifact(Path(prebuilt[target][0]), tmp / target if target != "onnx" else tmp)
                artifacts[target] = str(copied.relative_to(tmp))
                continue
            built = runtime.build(onnx_path, tmp / target if target != "onnx" else tmp, precision=config.precision,
                                  min_batch=config.min_batch, opt_batch=config.opt_batch, max_batch=config.max_batch)
            artifacts[target] = str(Path(built).relative_to(tmp))
        rng = np.random.default_rng(config.seed)
        batches = {bs: rng.standard_normal((bs, *input_shape)).astype(np.float32) for bs in config.batch_sizes}
        expected = {bs: _as_outputs(reference(x)) for bs, x in batches.items()}
        names = [o.name for o in read_onnx(onnx_path).graph.output]
        for bs, outs in expected.items():
            if len(outs) != len(names):
                raise ValueError(f"the reference returns {len(outs)} outputs but {onnx_file} has {len(names)}: "
                                 f"{names}")
        held = _held_out_reference(reference, held_out, max(config.batch_sizes)) if held_out is not None else None
        for target, runtime in runtimes.items():
            device = "cuda" if target == "tensorrt" else config.device
            precision = precisions[target]
            say(f"checking {target} parity")
            session = runtime.load(tmp / artifacts[target], SessionConfig(device=device, threads=config.threads,
                                                                          precision=precision))
            try:
                if precision == "int8":  # the same answers on real data, not the same numbers on noise
                    outputs = _over_batches(lambda x: _in_order(session, session.run_all(x), names), held[0])
                    results.extend(compare_outputs(held[1], outputs, names, runtime=TARGET_RUNTIME[target],
                                                   device=device, precision=precision, floors=floors))
                    continue
                for bs, x in batches.items():
                    outputs = _in_order(session, session.run_all(x), names)
                    results.extend(compare_outputs(expected[bs], outputs, names, runtime=TARGET_RUNTIME[target],
                                                   device=device, precision=precision))
            finally:
                session.close()
        output = next(iter(expected.values()))[0]
        manifest.update({
            "schema_version": SCHEMA_VERSION,
            "created_unix": time.time(),
            "input": {"shape": ["batch", *input_shape], "dtype": "float32"},
            "num_classes": int(output.shape[-1]) if output.ndim == 2 else None,
            "output_shape": ["batch", *output.shape[1:]],  # the first output's
            "outputs": [{"name": name, "shape": _declared_shape({bs: outs[i] for bs, outs in expected.items()})}
                        for i, name in enumerate(names)],
            "precision": config.precision,
            "artifacts": artifacts,
            "artifact_precision": precisions,
            "versions": package_versions(),
            "parity": [r.to_dict() for r in results],
            "parity_passed": all(r.passed for r in results),
            **(extra or {}),
        })
        if "int8" in precisions.values():
            manifest["int8"] = {**(manifest.get("int8") or {}), "floors": dict(zip(
                ("cosine", "top1_agreement"), floors_for("int8", floors)[1:])), "held_out_samples": len(held_out)}
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest["files"] = {str(p.relative_to(tmp)): _sha256(p) for p in files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))

    path = atomic_directory(out_dir, write)
    if not manifest["parity_passed"]:
        raise ParityError(results)
    return Bundle(Path(path), manifest, manifest["parity"])


def _held_out_reference(reference: Callable[[np.ndarray], Outputs], held_out: np.ndarray,
                        batch: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The held-out samples in batches, and the reference's outputs on all of them (one array per output)."""
    held_out = np.ascontiguousarray(held_out, dtype=np.float32)
    batches = [held_out[i:i + batch] for i in range(0, len(held_out), batch)]
    return batches, _over_batches(lambda x: _as_outputs(reference(x)), batches)


def _read_manifest(path: Path) -> dict[str, Any]:
    """``manifest.json`` parsed, with its schema version checked; every failure a BundleError naming the file."""
    return read_versioned_json(path, kind="bundle", schema_version=SCHEMA_VERSION, error=BundleError)


def load_bundle(path: str | Path, *, verify: bool = True, allow_failed_parity: bool = False) -> Bundle:
    """Read a bundle's manifest and check it against the bundle's files (torch is not needed).

    With ``verify`` (the default), :func:`runtimes._manifest_check.verify_manifest` checks that the
    ``files`` table lists every file a runtime of the bundle loads and each one's sha256, that the
    declared input and outputs match the ONNX graph's, that ``cost.flops`` matches the graph's
    MACs, and that the parity record agrees with itself.

    Args:
        path: the bundle directory.
        verify: run the checks above; False only reads the manifest (for tools that inspect a
            bundle they do not run).
        allow_failed_parity: load a bundle whose recorded parity check failed.

    Raises:
        BundleError: the manifest is missing or invalid; its files table is missing, empty or
            lacks a file a runtime loads; a file is missing or altered; the declared input,
            output or FLOPs disagree with the ONNX graph; the parity record contradicts itself;
            or the bundle failed its parity check (unless ``allow_failed_parity``).
    """

    root = Path(path)
    manifest = _read_manifest(root / MANIFEST)
    unchecked = verify_manifest(root, manifest, _sha256) if verify else []
    if not manifest.get("parity_passed", False) and not allow_failed_parity:
        failed = [r for r in manifest.get("parity", []) if not r.get("passed")]
        raise BundleError(f"bundle {root} failed its parity check ({len(failed)} failing runs); "
                          "pass allow_failed_parity=True to load it anyway")
    return Bundle(root, manifest, manifest.get("parity", []), unchecked)
