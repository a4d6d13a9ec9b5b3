"""``compressor info``: what a saved model directory or an export bundle holds, as text or ``--json``.

Both come from one description (:func:`describe`), so they cannot drift. The ratios to the
original model multiply the pruning history's per-step ratios: every removal step records its
FLOPs and params ratio against the model it pruned, and a strategy's closing entry repeats the
ratios of the removals it made, so it is left out of the product.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from compressor.common.files import file_sha256 as _sha256, read_versioned_json

from compressor.pruning import TARGET_KEYS
from compressor.deploy import load_model, read_spec, SPEC_FILE
from runtimes import MANIFEST, SCHEMA_VERSION
from compressor.app._bundle import pruning_alignment
import torch
from compressor.graph import count_cost
from compressor.common.errors import CompressorError
from models import default_input_size

__all__ = ["INFO_SCHEMA_VERSION", "InfoError", "add_parser", "cmd_info", "describe", "render"]

INFO_SCHEMA_VERSION = 1
SUMMARY_FILE = "summary.json"  # written by `compressor prune` beside model.json


class InfoError(CompressorError, ValueError):
    """The path is missing, or is neither a saved model directory nor an export bundle."""


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """Describe a saved model directory (``model.json``), a ``compressor train`` output (its
    ``model/``) or an export bundle (``manifest.json``) as a JSON-ready dict.

    Raises:
        InfoError: the path does not exist or holds neither; the bundle manifest is invalid.
        compressor.ModelFormatError: the saved model's ``model.json`` is invalid.
    """

    root = Path(path)
    if root.is_file() and root.name in (SPEC_FILE, MANIFEST):
        root = root.parent
    if not root.exists():
        raise InfoError(f"{root} does not exist (expected a saved model or an export bundle directory)")
    if (root / MANIFEST).is_file():
        return _describe_bundle(root)
    for candidate in (root, root / "model"):  # a `compressor train` output keeps its model in model/
        if (candidate / SPEC_FILE).is_file():
            return _describe_saved_model(candidate)
    raise InfoError(f"{root} is neither a saved model directory (no {SPEC_FILE}) nor an export bundle "
                    f"(no {MANIFEST})")


# ---- the description -----------------------------------------------------------------------


def _describe_saved_model(root: Path) -> dict[str, Any]:

    spec = read_spec(root)
    metadata = spec.get("metadata") or {}
    summary = _read_json(root / SUMMARY_FILE)
    arch = spec.get("arch")
    name = (arch or {}).get("name") or (summary or {}).get("model")
    input_shape, input_source = _saved_input_shape(metadata, summary, name)
    if summary and isinstance(summary.get("after"), dict):
        cost: dict[str, Any] = {**{k: summary["after"].get(k) for k in ("params", "macs", "flops")},
                                "source": SUMMARY_FILE}
    else:
        cost = _counted_cost(root, input_shape)
    history = metadata.get("history") or []
    files = [{"path": str(p.relative_to(root)), "bytes": p.stat().st_size, "sha256": _sha256(p), "ok": None}
             for p in sorted(root.rglob("*")) if p.is_file()]
    return {
        "schema_version": INFO_SCHEMA_VERSION, "kind": "saved_model", "path": str(root),
        "model": name, "arch": arch, "format": spec.get("format"),
        "input_shape": input_shape, "input_source": input_source, "output_shape": None,
        "cost": cost, **_against_original(cost, history),
        "history": [_step(e) for e in history], "weights": metadata.get("weights"),
        "training": metadata.get("training"), "alignment": pruning_alignment(metadata),
        "files": files, "artifacts": [], "parity": [], "parity_passed": None,
    }


def _describe_bundle(root: Path) -> dict[str, Any]:
    manifest = read_versioned_json(root / MANIFEST, kind="bundle", schema_version=SCHEMA_VERSION, error=InfoError)
    recipe = manifest.get("recipe") or {}
    history = recipe.get("history") or []
    deployed = manifest.get("cost") or {}
    cost = {**{k: deployed.get(k) for k in ("params", "macs", "flops")}, "source": MANIFEST}
    fold = manifest.get("fold") or {}
    # the ratios compare unfolded models: the original never had its BatchNorms folded
    unfolded = {"params": fold.get("params_before", cost["params"]),
                "flops": 2 * fold["macs_before"] if "macs_before" in fold else cost["flops"]}
    files = []
    for rel, digest in sorted((manifest.get("files") or {}).items()):
        file = root / rel
        present = file.is_file()
        files.append({"path": rel, "bytes": file.stat().st_size if present else None, "sha256": digest,
                      "ok": present and _sha256(file) == digest})
    shape = (manifest.get("input") or {}).get("shape") or []
    onnx = manifest.get("onnx") or {}
    return {
        "schema_version": INFO_SCHEMA_VERSION, "kind": "bundle", "path": str(root),
        "model": manifest.get("source") or None, "arch": None, "format": None,
        "input_shape": [d for d in shape if d != "batch"] or None, "input_source": MANIFEST,
        "input_dtype": (manifest.get("input") or {}).get("dtype"),
        "output_shape": manifest.get("output_shape"), "num_classes": manifest.get("num_classes"),
        "precision": manifest.get("precision"), "onnx": {k: onnx.get(k) for k in ("opset", "exporter")},
        "cost": cost, "trm_bytes": deployed.get("trm_bytes"), **_against_original(unfolded, history),
        "fold": {"folded": len(fold.get("folded") or []), "kept": len(fold.get("kept") or {})} if fold else None,
        "history": [_step(e) for e in history], "weights": manifest.get("weights"),
        "training": recipe.get("training"), "alignment": manifest.get("alignment"),
        "files": files, "artifacts": _artifacts(manifest.get("artifacts") or {}, files),
        "parity": manifest.get("parity") or [], "parity_passed": manifest.get("parity_passed"),
        "versions": manifest.get("versions"), "created_unix": manifest.get("created_unix"),
    }


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InfoError(f"{path} is not readable JSON: {exc}") from None
    return data if isinstance(data, dict) else None


def _saved_input_shape(metadata: dict[str, Any], summary: dict[str, Any] | None,
                       name: str | None) -> tuple[list[int] | None, str | None]:
    """The size it was pruned or trained at (metadata), the prune summary's, else the zoo default."""
    if metadata.get("input_size"):
        return [int(v) for v in metadata["input_size"]], "recorded"
    if summary and summary.get("input_shape"):
        return [int(v) for v in summary["input_shape"][1:]], SUMMARY_FILE
    if name:

        try:
            return list(default_input_size(name)), "zoo default"
        except ValueError:
            pass
    return None, None


def _counted_cost(root: Path, input_shape: list[int] | None) -> dict[str, Any]:
    """The model's cost at ``input_shape``, counted now; ``{"error": why}`` when it cannot be."""

    if input_shape is None:
        return {"error": "no input size recorded"}
    try:  # never unpickles: a pickle-format model reports why it was not counted
        report = count_cost(load_model(root), torch.zeros(1, *input_shape))
    except (CompressorError, RuntimeError, ValueError, TypeError, KeyError, ImportError) as exc:
        return {"error": f"not counted: {type(exc).__name__}: {exc}"}
    return {"params": report.params, "macs": report.macs, "flops": report.flops, "source": "counted"}


def _against_original(cost: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """``ratio`` (kept fraction of the original's FLOPs and params) and ``original`` (its cost)."""
    steps = [e for e in history if e.get("step") != "strategy" and e.get("flops_ratio") is not None]
    if not steps:
        return {"ratio": None, "original": None}

    def product(key: str) -> float | None:
        values = [e.get(key) for e in steps]
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        return math.prod(float(v) for v in values) if ok else None

    ratio = {"flops": product("flops_ratio"), "params": product("params_ratio")}
    original = {k: cost[k] / ratio[k] if cost.get(k) and ratio[k] else None for k in ("flops", "params")}
    return {"ratio": ratio, "original": original}


def _step(entry: dict[str, Any]) -> dict[str, Any]:
    """One history entry: the step, its criterion, target and alignment, its cost ratios; ``entry`` raw."""
    recipe = entry.get("recipe") or {}
    config = entry.get("config") or recipe.get("prune") or {}
    out: dict[str, Any] = {"step": entry.get("step", "?"), "flops_ratio": entry.get("flops_ratio"),
                           "params_ratio": entry.get("params_ratio")}
    if config:
        target = next(((k, config[k]) for k in TARGET_KEYS if config.get(k) is not None), None)
        out.update(criterion=config.get("criterion"),
                   target={"name": target[0], "value": target[1]} if target else None,
                   round_to=config.get("round_to"), alignment=config.get("alignment") or None,
                   selection=entry.get("selection"))
    if recipe.get("strategy"):
        out["strategy"] = {k: recipe["strategy"].get(k) for k in ("name", "finetune_epochs")}
    if out["step"] == "fold":
        out["folded"], out["kept"] = entry.get("folded"), len(entry.get("kept") or {})
    out["entry"] = entry
    return out


def _artifacts(artifacts: dict[str, str], files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target's artifact with its files: a directory's files, or those beside a file in a subdirectory."""
    out = []
    for target, rel in sorted(artifacts.items()):
        folder = rel if not Path(rel).suffix else (str(Path(rel).parent) if Path(rel).parent != Path(".") else None)
        members = [f for f in files if f["path"] == rel or (folder and f["path"].startswith(folder + "/"))]
        out.append({"target": target, "path": rel, "bytes": sum(f["bytes"] or 0 for f in members),
                    "files": [f["path"] for f in members], "ok": all(f["ok"] for f in members) if members else False})
    return out


# ---- the text ------------------------------------------------------------------------------


def _si(value: float | None, unit: str) -> str:
    if value is None:
        return f"? {unit}"
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{prefix} {unit}"
    return f"{value:.3g} {unit}"


def _percent(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else "?"


def _bytes(n: int | None) -> str:
    if n is None:
        return "missing"
    for scale, unit in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _file_check(f: dict[str, Any]) -> str:
    """sha256 (its first 16 hex digits) and whether the file on disk still matches the manifest."""
    return f"sha256 {f['sha256'][:16]}  " + ("ok" if f["ok"] else "missing" if f["bytes"] is None else "MISMATCH")


def _alignment_text(alignment: dict[str, Any] | None) -> str:
    if not alignment:
        return "none recorded (not pruned, or pruned without alignment)"
    auto = alignment.get("auto") or {}
    if not auto:
        return f"round_to={alignment.get('round_to')}"
    kinds = ", ".join(f"{k} {v}" for k, v in (auto.get("kinds") or {}).items())
    sources = ", ".join(f"{name}: {r.get('source')}" for name, r in (auto.get("runtimes") or {}).items())
    return (f"auto -> {kinds} ({auto.get('device', '?')}, batch {auto.get('batch_size', '?')}, threads "
            f"{auto.get('threads') or 'default'}; {sources})")


def _step_text(step: dict[str, Any]) -> str:
    parts = []
    if step.get("strategy"):
        s = step["strategy"]
        parts.append(f"strategy {s.get('name')}" + (f", {s['finetune_epochs']} fine-tune epochs"
                                                    if s.get("finetune_epochs") else ""))
    if step.get("criterion"):
        parts.append(f"criterion {step['criterion']}")
    if step.get("target"):
        parts.append(f"{step['target']['name']}={step['target']['value']:g}")
    if step.get("selection"):
        parts.append(f"selection {step['selection']}")
    if step.get("round_to") is not None:
        parts.append(f"round_to={step['round_to']}")
    if step["step"] == "fold":
        parts.append(f"{step.get('folded')} BatchNorms folded, {step.get('kept')} kept")
    text = f"{step['step']}: {', '.join(parts)}" if parts else step["step"]
    if step.get("flops_ratio") is not None:
        text += f" -> FLOPs {_percent(step['flops_ratio'])}, params {_percent(step.get('params_ratio'))}"
    return text


def render(info: dict[str, Any]) -> str:
    """The human summary of :func:`describe`'s dict."""
    lines = [f"{'bundle' if info['kind'] == 'bundle' else 'saved model'} {info['path']}"]

    def row(label: str, *values: str) -> None:
        for i, value in enumerate(values):
            lines.append(f"  {label if i == 0 else '':<11} {value}")

    model = info.get("model") or "unknown"
    if info["kind"] == "bundle":
        onnx = info.get("onnx") or {}
        created = info.get("created_unix")
        when = (datetime.datetime.fromtimestamp(created, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
                if isinstance(created, (int, float)) else "?")
        row("model", f"{model}, exported {when} ({info.get('precision')}, ONNX opset {onnx.get('opset')}, "
                     f"{onnx.get('exporter')} exporter)")
    else:
        kwargs = (info.get("arch") or {}).get("kwargs")
        row("model", f"{model}" + (f" {kwargs}" if kwargs else "") + f", format {info.get('format')}")
    shape = info.get("input_shape")
    text = "x".join(str(d) for d in shape) if shape else "not recorded"
    if info["kind"] == "bundle":
        out = info.get("output_shape") or []
        text = f"batch x {text} {info.get('input_dtype')} -> {' x '.join(str(d) for d in out)}"
        if info.get("num_classes"):
            text += f" ({info['num_classes']} classes)"
    elif info.get("input_source"):
        text += f" ({info['input_source']})"
    row("input", text)
    cost = info["cost"]
    if "error" in cost:
        row("cost", cost["error"])
    else:
        text = f"{_si(cost.get('flops'), 'FLOPs')}, {_si(cost.get('params'), 'params')}"
        if info["kind"] == "bundle" and info.get("fold"):
            text += f" (after folding {info['fold']['folded']} BatchNorms)"
        ratio, original = info.get("ratio"), info.get("original") or {}
        if ratio:
            text += (f"; {_percent(ratio['flops'])} of the original's FLOPs ({_si(original.get('flops'), 'FLOPs')}), "
                     f"{_percent(ratio['params'])} of its params ({_si(original.get('params'), 'params')})")
        else:
            text += "; not pruned"
        row("cost", text)
    weights = info.get("weights") or {}
    if weights:
        trained = {True: "trained", False: "not trained", None: "trained: unknown"}.get(weights.get("trained"), "?")
        row("weights", f"{weights.get('origin', '?')}, {trained}")
    training = info.get("training")
    if training:
        metrics = ", ".join(f"{k} {v:.2%}" for k, v in (training.get("final_metrics") or {}).items())
        row("training", f"{training.get('epochs')} epochs on {training.get('data')}"
                        + (f": {metrics}" if metrics else ""))
    row("history", *([f"{i}. {_step_text(s)}" for i, s in enumerate(info["history"], 1)] or ["none"]))
    row("alignment", _alignment_text(info.get("alignment")))
    if info["kind"] == "bundle":
        artifacts = []
        files = {f["path"]: f for f in info["files"]}
        for a in info["artifacts"]:
            single = a["files"] == [a["path"]]
            artifacts.append(f"{a['target']:<9} {a['path']:<24} {_bytes(a['bytes']):>10}"
                             + (f"  {_file_check(files[a['path']])}" if single else ""))
            if not single:
                artifacts += [f"  {rel:<31} {_bytes(files[rel]['bytes']):>10}  {_file_check(files[rel])}"
                              for rel in a["files"]]
        row("artifacts", *(artifacts or ["none"]))
        nan = float("nan")
        parity = [f"{p.get('runtime')} {p.get('device')} {p.get('precision')} batch {p.get('batch_size')}: "
                  f"max abs {p.get('max_abs_error', nan):.2e}, rel {p.get('max_rel_error', nan):.2e}, "
                  f"cosine {p.get('cosine_similarity', nan):.6f}, "
                  f"top-1 {p.get('top1_agreement', nan):.0%} {'ok' if p.get('passed') else 'FAILED'}"
                  for p in info["parity"]]
        verdict = {True: "passed", False: "FAILED", None: "not recorded"}[info.get("parity_passed")]
        row("parity", verdict, *parity)
        versions = info.get("versions") or {}
        row("versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v) or "not recorded")
    else:
        row("files", *[f"{f['path']:<22} {_bytes(f['bytes']):>10}  sha256 {f['sha256'][:16]}" for f in info["files"]])
    return "\n".join(lines)


# ---- the command ---------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> int:
    """Print the description of a saved model or bundle; 2 (via main) for a bad path."""
    try:
        info = describe(args.path)
        text = json.dumps(info, indent=1, default=str) if args.json else render(info)
    except (KeyError, TypeError, AttributeError) as exc:  # JSON of the right schema version, wrong content
        raise InfoError(f"{args.path}: unexpected content in its JSON files ({type(exc).__name__}: {exc})") from exc
    print(text)
    damaged = [f["path"] for f in info["files"] if f["ok"] is False]
    if damaged:
        print(f"warning: {len(damaged)} file(s) missing or not matching their sha256 in the manifest: "
              f"{', '.join(damaged)}", file=sys.stderr)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    i = sub.add_parser("info", help="describe a saved model or an export bundle",
                       description="Summarise a saved model directory (or a `compressor train` output) or an "
                                   "export bundle: model, input size, cost and its ratio to the original, the "
                                   "pruning history (criterion, target, alignment), files with sizes and "
                                   "sha256, parity figures.")
    i.add_argument("path", help="saved model directory, `compressor train` output, or bundle directory")
    i.add_argument("--json", action="store_true",
                   help=f"print the description as JSON (schema_version {INFO_SCHEMA_VERSION}) instead of text")
    i.set_defaults(func=cmd_info)
