"""``compressor`` command line: builds configs and calls the library, nothing more."""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

from benchmarks import (add_bench_arguments, BENCH_DESCRIPTION, BenchConfig, DECISIONS, evaluate_gate, failing_rules,
                        load_budgets, merge_results, run_bench, run_benchmark, run_command, TABLE_HEADERS,
                        table_rows, write_junit)

from compressor.app._cli_types import (fraction, fraction_below_one, non_negative_float, non_negative_int, positive_float,
                         positive_int, positive_int_list, seed)
from compressor.pruning import (alignment_summary, DEPLOY_RUNTIMES, list_strategies, prune_model,
                                PRUNE_SCHEMA_VERSION, PruneConfig, run_strategy, strategy_config_from_dict)
from compressor.graph import build_dependency_graph, count_cost, deployable_module, network_view, part_rows
from compressor.criteria import get_criterion, list_criteria
from compressor.common.outputs import claim_output, FORCE_HELP
from compressor.deploy import ExportConfig, save_model, SPEC_FILE
from models import default_input_size
from compressor.app._cli_train import add_parsers as add_train_eval_parsers, parse_assignments, parse_input_size
from compressor.app._model_entry import (ALLOW_PICKLE_HELP, is_model_name, load_source, MODEL_ARG_HELP, MODEL_HELP,
                                         ModelSource, PICKLE_WARNING, saved_model_dir, WEIGHTS_HELP)
from compressor.training import parse_data_spec, TrainConfig
from compressor.app._evaluate import evaluate_classification
from compressor.app._latency_prune import prune_to_latency
from rich.console import Console
from rich.table import Table
import compressor.app._alignment as _alignment
from compressor.app._speed_guard import speed_check
from runtimes import BundleConfig, ParityError
from compressor.app._bundle import export_bundle, missing_runtimes
from compressor.app._int8 import Int8Config, Int8Error, load_int8_data
from compressor.app.pipeline._core import load_pipeline, run_pipeline
from compressor.app.pipeline._report import deployed_accuracy, HEADERS, summary_rows
import importlib.metadata
from compressor.app._cli_info import add_parser as add_info_parser
from compressor.common.files import atomic_write_bytes
import compressor

SUMMARY_FILE = "summary.json"


def _input_size(text: str | None, model_name: str, model: torch.nn.Module | None = None) -> tuple[int, ...]:
    """--input-size, else the size the model was trained or pruned at (its metadata), else the zoo default."""
    if text:

        return parse_input_size(text)
    recorded = (getattr(model, "compressor_metadata", None) or {}).get("input_size")
    if recorded:
        return tuple(int(v) for v in recorded)

    return tuple(default_input_size(model_name))


def _load_source(args: argparse.Namespace) -> tuple[torch.nn.Module, str]:
    """The model named by --model and --model-arg, with its --weights (see compressor.app._model_entry)."""

    if args.allow_pickle:
        print(PICKLE_WARNING, file=sys.stderr)
    loaded = load_source(ModelSource(args.model, parse_assignments(args.model_arg or [], "--model-arg"),
                                     weights=args.weights, allow_pickle=args.allow_pickle))
    return loaded.model, loaded.name


def _weights_provenance(args: argparse.Namespace, model: torch.nn.Module) -> dict[str, Any]:
    """Where the weights came from and whether they were trained (``None``: not known).

    Benchmarks record it: random-weight models give honest latencies only with denormals flushed,
    and accuracy figures mean nothing for them.
    """
    declared = getattr(args, "trained", None)
    if args.weights:
        return {"origin": f"file:{args.weights}", "trained": declared}

    inherited = (getattr(model, "compressor_metadata", None) or {}).get("weights")
    if saved_model_dir(args.model) is not None:
        base = dict(inherited) if isinstance(inherited, dict) else {"origin": f"saved model {args.model}", "trained": None}
        return {**base, "trained": declared if declared is not None else base.get("trained")}
    if not is_model_name(args.model) and Path(args.model).is_file():  # a pickled module (--allow-pickle)
        return {"origin": f"pickled module {args.model}", "trained": declared}
    if declared:
        raise ValueError(f"--trained was given, but {args.model} is built with random weights (no --weights file)")
    return {"origin": "random-init", "trained": False}


def _config(args: argparse.Namespace) -> PruneConfig:

    searched = args.target_latency_ms is not None  # the FLOPs target is what the latency search chooses
    return PruneConfig(criterion=args.criterion, ratio=args.ratio, global_ratio=args.global_ratio,
                       target_flops=1.0 if searched else args.target_flops, target_params=args.target_params,
                       round_to=args.round_to, runtime=args.runtime or ("onnxruntime" if searched else None),
                       device=args.device,
                       batch_size=(args.latency_batch_size or args.batch_size) if searched else args.batch_size,
                       threads=args.threads,
                       min_channels=args.min_channels, exclude=tuple(args.exclude or ()), seed=args.seed,
                       allow_renormalization=not args.no_renormalization, submodule=args.submodule,
                       boundary=tuple(args.boundary or ()),
                       criterion_options=parse_assignments(args.criterion_option or [], "--criterion-option"),
                       residual=args.residual, calib_batches=args.calib_batches,
                       calib_batch_size=args.calib_batch_size)


def _strategy(args: argparse.Namespace) -> tuple[Any, Any]:
    """The strategy's config and the TrainConfig of its training phases."""

    options = parse_assignments(args.strategy_option or [], "--strategy-option")
    strategy = strategy_config_from_dict(args.strategy, {"finetune_epochs": args.finetune_epochs, **options})
    train = TrainConfig(epochs=1, lr=args.lr, optimizer=args.optimizer, batch_size=args.train_batch_size,
                        weight_decay=args.weight_decay, seed=args.seed, threads=args.threads)
    return strategy, train


def _run_pruning(args: argparse.Namespace, config: PruneConfig, model: torch.nn.Module, example: Any,
                 size: tuple[int, ...]) -> tuple[torch.nn.Module, dict[str, Any]]:
    """prune_model, or run_strategy when a strategy trains or the criterion needs data."""

    strategy, train = _strategy(args)
    needs_data = get_criterion(config.criterion).needs_data
    if args.target_latency_ms is not None:
        return _prune_to_latency(args, config, model, size)
    if args.strategy == "oneshot" and strategy.finetune_epochs == 0 and not needs_data and not args.data:
        result = prune_model(model, example, config)
        return result.model, {"channels_removed": result.report.channels_removed,
                              "channels_removable": result.report.channels_removable,
                              "blocked": result.report.blocked, "seconds": result.report.seconds,
                              "layers": [vars(r) for r in result.report.layers]}
    if not args.data:
        why = f"criterion {config.criterion!r} is data-based" if needs_data else f"strategy {args.strategy!r} trains"
        raise ValueError(f"{why}: give --data (digits, folder:PATH)")

    spec = parse_data_spec(args.data, size)
    train_set, eval_sets = spec.train_set(), spec.eval_sets()
    result = run_strategy(model, example[:1] if isinstance(example, torch.Tensor) else example, config, strategy,
                          train_data=train_set, eval_data=eval_sets[0], train_config=train, progress=not args.quiet)

    top1 = evaluate_classification(result.model, eval_sets[0], threads=args.threads).top1
    return result.model, {"strategy": result.to_dict(), "eval_top1": top1, "seconds": {"strategy": result.seconds}}


def _prune_to_latency(args: argparse.Namespace, config: PruneConfig, model: torch.nn.Module,
                      size: tuple[int, ...]) -> tuple[torch.nn.Module, dict[str, Any]]:
    """--target-latency-ms: the least pruning that meets the budget measured on --runtime (--latency-method)."""

    if args.strategy != "oneshot" or args.finetune_epochs:
        raise ValueError("--target-latency-ms searches a one-shot pruning; fine-tune the result afterwards "
                         "(compressor train --model OUT ...)")
    if args.latency_method != "lut" and (args.latency_table or args.no_latency_compare):
        raise ValueError("--latency-table and --no-latency-compare apply to --latency-method lut")
    data = None
    if args.data:

        data = parse_data_spec(args.data, size).train_set()
    result = prune_to_latency(model, tuple(size), config, args.target_latency_ms, method=args.latency_method,
                              compare=not args.no_latency_compare, runtime=args.runtime or "onnxruntime",
                              batch_size=args.latency_batch_size or args.batch_size, threads=args.threads, data=data,
                              table_path=args.latency_table, progress=None if args.quiet else lambda m: print(f"  {m}"))
    _print_latency_result(result, args)
    return result.model, {"latency_search": result.to_dict(samples=False)}


def _print_latency_result(result: Any, args: argparse.Namespace) -> None:

    budget = result.budget_ms
    table = Table(title=f"latency budget {budget:g} ms on {result.runtime} (batch {result.batch_size})")
    for col in ("model", "FLOPs kept", "params kept", "median ms (95% CI)", "budget"):
        table.add_column(col, justify="left" if col in ("model", "budget") else "right")
    rows = [("unpruned", result.unpruned), ("FLOPs-proportional guess", result.flops_guess)]
    if result.method == "lut":
        rows += [("FLOPs target (measured search)", result.flops_chosen), ("latency table (chosen)", result.chosen)]
    else:
        rows += [("FLOPs target (chosen)", result.chosen)]
    for name, c in rows:
        if c is not None:
            table.add_row(name, f"{c.flops_ratio:.1%}", f"{c.params_ratio:.1%}",
                          f"{c.latency_ms_median:.3f} ({c.latency_ms_ci[0]:.3f}-{c.latency_ms_ci[1]:.3f})",
                          "meets" if c.meets(budget) else "misses")
    Console().print(table)
    other = result.flops_chosen
    if result.method == "lut" and other is not None and other is not result.chosen:
        print(f"at the same budget the latency table keeps {result.chosen.flops_ratio - other.flops_ratio:+.1%} FLOPs "
              f"and {result.chosen.params_ratio - other.params_ratio:+.1%} params against the FLOPs target")


def _layer_rows(before: torch.nn.Module, after: torch.nn.Module, example: Any) -> list[dict[str, Any]]:
    """Channels and MACs per conv/Linear layer of two models (the strategies' layer table)."""
    def io(module: torch.nn.Module) -> tuple[int, int]:
        if isinstance(module, torch.nn.Linear):
            return module.in_features, module.out_features
        return module.in_channels, module.out_channels

    costs_after = {r.name: r for r in count_cost(after, example).layers}
    modules_after = dict(after.named_modules())
    rows = []
    for row in count_cost(before, example).layers:
        (in_b, out_b), (in_a, out_a) = io(before.get_submodule(row.name)), io(modules_after[row.name])
        rows.append({"name": row.name, "kind": row.type, "in_before": in_b, "in_after": in_a, "out_before": out_b,
                     "out_after": out_a, "macs_before": row.macs, "macs_after": costs_after[row.name].macs})
    return rows


def _print_table(rows: list[dict[str, Any]], title: str) -> None:

    table = Table(title=title, show_lines=False)
    for col in ("layer", "type", "in", "out", "MFLOPs"):
        table.add_column(col, justify="left" if col in ("layer", "type") else "right")
    for r in rows:
        arrow = lambda a, b: f"{a} → {b}" if a != b else str(a)  # noqa: E731
        table.add_row(r["name"], r["kind"], arrow(r["in_before"], r["in_after"]), arrow(r["out_before"], r["out_after"]),
                      arrow(f"{2 * r['macs_before'] / 1e6:.2f}", f"{2 * r['macs_after'] / 1e6:.2f}"))
    Console(stderr=False).print(table)


def _print_parts(network: dict[str, Any], name: str) -> None:
    """FLOPs of each part of a detector (backbone, neck, heads) before and after."""
    table = Table(title=f"{name}: {network['family']} network, input {network['input_shape']}")
    for col in ("part", "layers", "GFLOPs before", "GFLOPs after", "kept"):
        table.add_column(col, justify="left" if col == "part" else "right")
    for row in network["parts"]:
        kept = row["flops_after"] / row["flops_before"] if row["flops_before"] else 1.0
        table.add_row(row["part"], str(row["layers"]), f"{row['flops_before'] / 1e9:.3f}",
                      f"{row['flops_after'] / 1e9:.3f}", f"{kept:.1%}")
    Console().print(table)
    print(f"outputs kept: {', '.join(network['outputs'])}; runs after the network, unchanged: "
          f"{network['runs_after_the_network']}")


def _is_detection(name: str) -> bool:
    if not name.startswith("torchvision:"):
        return False
    import torchvision.models as tvm  # optional SDK: torchvision

    return name.split(":", 1)[1] in tvm.list_models(module=tvm.detection)


def _round_to(text: str) -> int | str:
    """--round-to: 'auto' or an integer >= 1."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer >= 1, got {value}")
    return value


def cmd_prune(args: argparse.Namespace) -> int:

    config = _config(args)
    claim_output(args.output, "prune", force=args.force, inputs=(args.model, args.weights))
    model, name = _load_source(args)
    size = _input_size(args.input_size, name, model)
    example: Any = torch.randn(args.batch_size, *size, generator=torch.Generator().manual_seed(0))
    detection = bool(args.image_list or _is_detection(name))
    if detection:
        example = (list(example),)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    config = _alignment.resolve_alignment(config)
    print(alignment_summary(config))
    pruned, facts = _run_pruning(args, config, model, example, size)
    seconds = time.perf_counter() - t0
    view = network_view(model) if not config.submodule else None
    if view is not None:  # a whole detector: what is pruned and counted is its network
        network_input = view.network_input(example)
        before, after = count_cost(view, network_input), count_cost(network_view(pruned), network_input)
        detection = True
    else:
        before, after = count_cost(model, example), count_cost(pruned, example)
    if args.no_speed_check:
        checks = None
    elif view is not None:  # what ships: the detector's deployable network, at its input size
        shipped, shipped_pruned = deployable_module(model), deployable_module(pruned)
        shipped_size = tuple(network_input[0].shape[1:])
        cost_before, cost_after = count_cost(shipped, network_input), count_cost(shipped_pruned, network_input)
        checks = _speed_check(args, config, shipped, shipped_pruned, shipped_size, False,
                              cost_before.macs / cost_after.macs if cost_after.macs else 1.0)
    else:
        checks = _speed_check(args, config, model, pruned, size, detection,
                              before.macs / after.macs if after.macs else 1.0)
    summary = {
        "schema_version": PRUNE_SCHEMA_VERSION,
        "model": name,
        "input_shape": before.input_shape,
        "config": config.to_dict(),
        "flops_convention": "FLOPs = 2 x MACs, per sample, from torch.utils.flop_counter",
        "before": {"params": before.params, "macs": before.macs, "flops": before.flops, "fm_elements": before.fm_elements},
        "after": {"params": after.params, "macs": after.macs, "flops": after.flops, "fm_elements": after.fm_elements},
        "flops_ratio": after.macs / before.macs,
        "params_ratio": after.params / before.params,
        **facts,
        "seconds": {**facts.get("seconds", {}), "total": seconds},
        "speed_check": checks,
    }
    if "layers" not in summary:
        summary["layers"] = _layer_rows(model, pruned, example)
    if view is not None:
        summary["network"] = {"family": view.family, "input_shape": list(network_input[0].shape),
                              "input": view.input_note, "outputs": view.output_names(),
                              "runs_after_the_network": view.postprocess_note,
                              "parts": part_rows(view, summary["layers"])}
    if not args.quiet:
        _print_table([r for r in summary["layers"] if r["in_before"] != r["in_after"] or r["out_before"] != r["out_after"]]
                     if args.changed_only else summary["layers"], f"{name}: {config.criterion}, {config.target[0]}={config.target[1]:g}")
    if view is not None and not args.quiet:
        _print_parts(summary["network"], name)
    weights = _weights_provenance(args, model)
    if "strategy" in facts:  # trained on the data after pruning
        weights = {**weights, "trained": True, "finetuned_on": args.data}
    pruned.compressor_metadata = {**(getattr(pruned, "compressor_metadata", None) or {}),
                                  "weights": weights, "input_size": list(size)}
    out = save_model(pruned, args.output, arch=getattr(model, "zoo_spec", None), extra_files={SUMMARY_FILE: summary})
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    print(f"params {before.params / 1e6:.3f}M -> {after.params / 1e6:.3f}M ({summary['params_ratio']:.1%}), "
          f"FLOPs {before.flops / 1e9:.3f}G -> {after.flops / 1e9:.3f}G ({summary['flops_ratio']:.1%}), "
          + (f"{summary['channels_removed']} channels removed" if "channels_removed" in summary
             else f"strategy {args.strategy}") + f" in {seconds:.2f}s"
          + (f"; top-1 {summary['eval_top1']:.2%} on {args.data}" if "eval_top1" in summary else ""))
    print(f"saved to {out}/ ({SPEC_FILE}, weights.pt, {SUMMARY_FILE})")
    if checks and checks.get("error"):
        print(f"error: the speed check could not measure: {checks['error']} -> exit 4 (not measured)",
              file=sys.stderr)
        return 4  # bench's and gate's "not measured"
    return 0


def _speed_check(args: argparse.Namespace, config: PruneConfig, model: torch.nn.Module, pruned: torch.nn.Module,
                 size: tuple[int, ...], detection: bool, theoretical: float) -> dict[str, Any]:
    """Time the pruned model against the unpruned one on the target runtime(s); print the verdict."""

    if detection or args.submodule:
        note = ("skipped: the speed check needs the whole deployable model (this one is a submodule, or a detector "
                "whose network is not known); benchmark the exported bundle with compressor bench")
        print(note)
        return {"skipped": note}
    runtimes = [config.runtime] if config.runtime else _alignment.default_runtimes()
    round_to = config.round_to if config.round_to != "auto" else max(config.alignment["kinds"].values())
    print(f"speed check: pruned vs unpruned on {', '.join(runtimes)} ({config.device}, batch {config.batch_size}, "
          f"threads {config.threads or 'default'}), interleaved ...", flush=True)
    try:
        checks = speed_check(model, pruned, size, runtimes, theoretical=theoretical, device=config.device,
                             batch_size=config.batch_size, threads=config.threads, alignment=int(round_to))
    except Exception as exc:  # the model was pruned and is saved; the measurement is what failed
        return {"error": f"{type(exc).__name__}: {exc}", "checks": []}
    _print_speed_checks(checks)
    explicit = bool(config.runtime)
    errors = [c for c in checks if c.error]
    out: dict[str, Any] = {"checks": [c.to_dict() for c in checks]}
    if errors and (explicit or len(errors) == len(checks)):
        out["error"] = "; ".join(f"{c.runtime}: {c.error}" for c in errors)
    return out


def _print_speed_checks(checks: list[Any]) -> None:

    console = Console()
    for c in checks:
        if c.error:
            console.print(f"[yellow]speed check on {c.runtime}: not measured ({c.error})[/yellow]")
            continue
        line = (f"speed check on {c.runtime} (batch {c.batch_size}): {c.practical:.2f}x faster "
                f"[{c.practical_ci[0]:.2f}, {c.practical_ci[1]:.2f}] against {c.theoretical:.2f}x theoretical, "
                f"efficiency {c.efficiency:.2f} ({c.unpruned_ms_median:.3f} -> {c.pruned_ms_median:.3f} ms)")
        if c.ok:
            console.print(f"[green]{line}[/green]")
        else:
            console.print(f"[bold red]WARNING: {line}[/bold red]")
            console.print(f"[bold red]  {c.verdict.get('message', '')}[/bold red]")


def cmd_export(args: argparse.Namespace) -> int:
    """Fold BN, export ONNX, build the runtime artifacts and verify each one's parity."""

    targets = tuple(t.strip() for t in args.to.split(",") if t.strip())
    bundle_config = BundleConfig(targets=targets, precision=args.precision, threads=args.threads,
                                 batch_sizes=args.batch_sizes,
                                 max_batch=args.max_batch, opt_batch=min(8, args.max_batch))
    export_config = ExportConfig(opset=args.opset, exporter=args.exporter)
    for target, reason in missing_runtimes(targets).items():  # fail before any work
        print(f"error: cannot export to {target}: {reason}", file=sys.stderr)
        return 2
    int8_config = _int8_config(args)
    model, name = _load_source(args)
    size = _input_size(args.input_size, name, model)
    int8 = (int8_config, load_int8_data(int8_config, size)) if int8_config else None  # bad data: before any write
    claim_output(args.output, "export", force=args.force, inputs=(args.model, args.weights))
    view = network_view(model)
    if view is not None:  # a detector ships its deployable network; say what runs after it
        print(f"{view.family} detector: the bundle holds {view.deploy_note}")
        model = deployable_module(model)
    try:
        exported = export_bundle(model, args.output, tuple(size), bundle_config, export_config,
                                 fold=not args.no_fold, source=name, weights=_weights_provenance(args, model),
                                 progress=lambda m: print(f"... {m}", file=sys.stderr), int8=int8)
    except ParityError as exc:  # its code is the table's (3); the message adds where the failure is recorded
        print(f"error: {exc}\n(the bundle was written with the failure recorded in manifest.json)", file=sys.stderr)
        return exc.exit_code
    bundle, fold_report = exported.bundle, exported.fold
    if fold_report:
        print(f"folded {len(fold_report.folded)} BatchNorms, kept {len(fold_report.kept)}"
              + "".join(f"\n  kept {bn}: {why}" for bn, why in list(fold_report.kept.items())[:10]))
    for result in bundle.parity:
        int8 = result["precision"] == "int8"
        cosine = f"mean cosine {result['mean_cosine_similarity']:.6f}" if int8 else \
            f"cosine {result['cosine_similarity']:.6f}"
        print(f"parity {result['runtime']}/{result['device']}/{result['precision']} "
              f"{'on ' + str(result['batch_size']) + ' held-out samples' if int8 else 'batch ' + str(result['batch_size'])}"
              f": max abs {result['max_abs_error']:.2e}, rel {result['max_rel_error']:.2e}, {cosine}, "
              f"top-1 {'agreement ' if int8 else ''}{result['top1_agreement']:.1%}: "
              f"{'ok' if result['passed'] else 'FAILED'}")
    _print_int8(exported.int8)
    print(f"bundle written to {bundle.path}/ ({', '.join(sorted(bundle.manifest['artifacts'].values()))}, manifest.json)")
    return 0


# each INT8 flag and the Int8Config field it sets (deploy batch size: the guard's)
_INT8_FLAGS = {"--calib-data": "calib_data", "--calib-samples": "calib_samples", "--calib-method": "calib_method",
               "--max-accuracy-drop": "max_accuracy_drop", "--min-int8-speedup": "min_int8_speedup",
               "--deploy-batch-size": "guard_batch_size", "--min-cosine": "min_cosine",
               "--min-top1-agreement": "min_top1_agreement"}


def _int8_config(args: argparse.Namespace) -> Int8Config | None:
    """The INT8 options, or None for another precision (where INT8 flags are an error, not ignored)."""
    given = {flag: getattr(args, flag[2:].replace("-", "_")) for flag in _INT8_FLAGS}
    given = {flag: value for flag, value in given.items() if value is not None}
    if args.precision != "int8":
        if given:
            raise Int8Error(f"{', '.join(given)} apply to --precision int8, not {args.precision}")
        return None
    if args.calib_data is None:
        raise Int8Error("--precision int8 needs --calib-data (digits, folder:PATH, digits-detect or npy:FILE): "
                        "the calibration set INT8 ranges are taken from")
    return Int8Config(**{_INT8_FLAGS[flag]: value for flag, value in given.items()})


def _print_int8(decisions: dict[str, Any] | None) -> None:
    console = Console()
    for target, d in (decisions or {}).items():
        colour = "green" if d.precision == "int8" else "yellow"
        console.print(f"[{colour}]{target}: ships {d.precision.upper()}: {d.reason}[/{colour}]")
        for layer in d.fp32_layers:
            console.print(f"  kept in FP32: {layer['layer']}: {layer['why']}")


def cmd_bench(args: argparse.Namespace) -> int:
    """Measure bundles across runtimes and batch sizes; write the report directory (the same command as the
    torch-free ``python -m benchmarks``: see benchmarks/_command.py)."""

    return run_bench(args)


def cmd_graph(args: argparse.Namespace) -> int:

    model, name = _load_source(args)
    example = torch.randn(1, *_input_size(args.input_size, name))
    graph = build_dependency_graph(model, example, exclude=tuple(args.exclude or ()))
    print(graph.describe())
    for group in graph.groups:
        if args.verbose or group.blocked_reasons:
            why = f"  blocked: {'; '.join(group.blocked_reasons)}" if group.blocked_reasons else ""
            print(f"  {group.describe(graph)}{why}")
    return 0


def _accuracy_file(path: str | None) -> dict[str, Any] | None:
    """``--accuracy``: ``{bundle: {runtime: top1}}`` JSON, or a pipeline run's ``summary.json``/directory."""
    if not path:
        return None
    source = Path(path)
    source = source / "summary.json" if source.is_dir() else source
    if not source.is_file():
        raise ValueError(f"--accuracy file {source} does not exist")
    data = json.loads(source.read_text())
    state = data.get("state") if isinstance(data, dict) else None
    if state and state.get("results"):  # a pipeline summary

        accuracy = deployed_accuracy(state)
        if accuracy is None:
            raise ValueError(f"{source} is a pipeline summary without an evaluate step")
        return accuracy
    return data


def _measure_for(rules: list[Any], bundles: list[str], baseline: str | None, threads: int | None,
                 quiet: bool) -> dict[str, Any]:
    """Benchmark exactly what the rules need (their runtimes, devices and batch sizes)."""

    config = BenchConfig(runtimes=tuple(sorted({r.runtime for r in rules})),
                         devices=tuple(sorted({r.device for r in rules})),
                         batch_sizes=tuple(sorted({r.batch_size for r in rules})), threads=threads,
                         memory=any("max_memory_mb" in r.budgets for r in rules))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return run_benchmark(bundles, baseline, config, progress=not quiet)


def cmd_gate(args: argparse.Namespace) -> int:
    """Check a benchmark report (or fresh measurements) against a budgets file; exit 0/1/4."""

    try:
        budgets = load_budgets(args.budgets)
        accuracy = _accuracy_file(args.accuracy)
        if args.report:
            report_path = Path(args.report)
            report_path = report_path / "results.json" if report_path.is_dir() else report_path
            if not report_path.is_file():
                raise ValueError(f"--report {report_path} does not exist")
            results = json.loads(report_path.read_text())
        elif args.bundles:
            results = _measure_for(list(budgets.rules), args.bundles, args.baseline, args.threads, args.quiet)
        else:
            raise ValueError("give --report (a benchmark report) or --bundles (to measure them now)")
        report = evaluate_gate(budgets, results, accuracy, decision=args.decision)
        if args.remeasure and report.failed:
            rules = failing_rules(report)
            paths = [b["path"] for b in results.get("bundles", []) if b.get("role") == "candidate"]
            base = next((b["path"] for b in results.get("bundles", []) if b.get("role") == "baseline"), None)
            print(f"re-measuring {len(rules)} failing rule(s) before deciding ...", file=sys.stderr)
            results = merge_results(results, _measure_for(rules, paths, base, args.threads, args.quiet))
            report = evaluate_gate(budgets, results, accuracy, decision=args.decision)
    except TypeError as exc:  # a report or accuracy file of the wrong shape: bad input (2), not an internal error
        raise ValueError(str(exc)) from exc
    _print_rows(f"release gate: {args.budgets} (confidence {budgets.confidence:g}, decision {report.decision})",
                TABLE_HEADERS, table_rows(report))
    for line in report.incomplete:
        print(f"not measured: {line}")
    if args.junit:
        write_junit(report, args.junit)
    if args.json:

        atomic_write_bytes(Path(args.json), json.dumps(report.to_dict(), indent=1).encode())
    print(f"gate: {report.verdict} ({len(report.passed)} passed, {len(report.failed)} failed, "
          f"{len(report.unmeasured)} not measured) -> exit {report.exit_code}")
    return report.exit_code


def _print_rows(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A rich table of text rows; in logs (not a terminal) wide enough never to truncate names."""

    table = Table(title=title)
    for col in headers:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    Console(width=None if sys.stdout.isatty() else 160).print(table)


DEFAULT_PIPELINE = Path(__file__).parents[1] / "pipelines" / "demo.yaml"  # compressor/pipelines/


def cmd_run(args: argparse.Namespace) -> int:
    """Run a pipeline file (default: the built-in demo) into one run directory."""

    pipeline = load_pipeline(args.pipeline or DEFAULT_PIPELINE, quick=args.quick)
    output = Path(args.output or Path("runs") / pipeline.name)
    result = run_pipeline(pipeline, output, force=args.force, progress=not args.quiet)  # a failed step: its code
    for title, rows in summary_rows(result.state).items():
        _print_rows(title, HEADERS[title], rows)
    print(f"run finished in {result.seconds:.0f}s: {len(result.executed)} steps run, {len(result.skipped)} skipped")
    print(f"summary: {output}/summary.md (summary.json)")
    if result.state.get("report"):
        print(f"report:  {output}/{result.state['report']}/report.html")
    return 0


def _version() -> str:
    """The installed distribution's version, else the package's ``__version__`` (a source checkout)."""

    try:
        return importlib.metadata.version("cnn-compressor")
    except importlib.metadata.PackageNotFoundError:

        return getattr(compressor, "__version__", "unknown (not installed)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compressor", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True, help=MODEL_HELP)
        p.add_argument("--model-arg", action="append", metavar="KEY=VALUE", help=MODEL_ARG_HELP)
        p.add_argument("--weights", help=WEIGHTS_HELP)
        p.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)
        p.add_argument("--input-size", help="example input C,H,W (default: the model's natural size)")
        p.add_argument("--exclude", action="append", help="layer name or regex to keep whole (repeatable)")

    p = sub.add_parser("prune", help="prune a model physically and save it")
    model_args(p)
    p.add_argument("--criterion", default="l2", choices=list_criteria())
    p.add_argument("--criterion-option", action="append", metavar="KEY=VALUE",
                   help="criterion option, e.g. tau=0.9 for simc, bins=10 for entropy (repeatable)")
    p.add_argument("--strategy", default="oneshot", choices=list_strategies(),
                   help="how to reach the target (default: one-shot)")
    p.add_argument("--strategy-option", action="append", metavar="KEY=VALUE",
                   help="an option of the strategy's config (compressor.pruning.*Config), e.g. step=0.05, "
                        "retrain_epochs=4, epochs=10, tolerance=0.01")
    p.add_argument("--finetune-epochs", type=non_negative_int, default=0,
                   help="fine-tuning epochs after the final removal")
    p.add_argument("--residual", default="coupled", choices=["coupled", "internal"],
                   help="ResNets: also prune the residual stream (coupled) or only inside blocks (internal)")
    p.add_argument("--data", help="data for data-based criteria and training: digits or folder:PATH")
    p.add_argument("--calib-batches", type=positive_int, default=8, help="calibration batches of data-based criteria")
    p.add_argument("--calib-batch-size", type=positive_int, default=64)
    p.add_argument("--lr", type=positive_float, default=0.01, help="learning rate of the training phases")
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"])
    p.add_argument("--weight-decay", type=non_negative_float, default=5e-4)
    p.add_argument("--train-batch-size", type=positive_int, default=64)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--ratio", type=fraction_below_one,
                        help="fraction of channels removed from every group (layer-wise)")
    target.add_argument("--global-ratio", type=fraction_below_one,
                        help="fraction of removable channels, ranked globally")
    target.add_argument("--target-flops", type=fraction, help="fraction of FLOPs to keep")
    target.add_argument("--target-params", type=fraction, help="fraction of parameters to keep")
    target.add_argument("--target-latency-ms", type=positive_float,
                        help="latency budget per batch, measured on --runtime "
                        "(the least pruning whose measured latency meets it; see --latency-method)")
    p.add_argument("--runtime", choices=list(DEPLOY_RUNTIMES),
                   help="the runtime the model ships to: it sets the channel alignment, the speed check and "
                   "--target-latency-ms (default: the CPU runtimes of this machine, onnxruntime and OpenVINO; "
                   "onnxruntime for --target-latency-ms)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "gpu"], help="the device it ships to")
    p.add_argument("--latency-batch-size", type=positive_int,
                   help="batch size of --target-latency-ms (default --batch-size)")
    p.add_argument("--latency-method", default="lut", choices=["lut", "search"],
                   help="lut: a per-layer latency table on --runtime ranks channels by importance per ms saved "
                   "(NetAdapt/HALP); search: a measured search over the FLOPs target (default lut)")
    p.add_argument("--latency-table", type=Path, help="JSON latency table to reuse and extend (lut); built per run "
                   "when not given")
    p.add_argument("--no-latency-compare", action="store_true", help="lut: skip the FLOPs-target search at the "
                   "same budget that shows what latency-awareness bought (halves the measuring time)")
    p.add_argument("--round-to", type=_round_to, default="auto",
                   help="kept channel counts are multiples of this; 'auto' (default) measures the alignment the "
                   "target runtime needs per layer kind (cached) and falls back to the CPU's vector width")
    p.add_argument("--min-channels", type=positive_int, default=1)
    p.add_argument("--no-renormalization", action="store_true", help="keep channels normalised by a LayerNorm")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--submodule", help="prune only this submodule (e.g. backbone of a detection model); its "
                   "outputs are kept, so the heads are untouched")
    p.add_argument("--boundary", action="append", metavar="MODULE",
                   help="run this submodule as an opaque part (never traced or pruned; the channels it reads are "
                   "kept): name your own detector's post-processing (anchors, NMS, decoding) to prune the whole "
                   "network in front of it; repeatable. torchvision and Ultralytics detectors need none")
    p.add_argument("--image-list", action="store_true", help="the model takes a list of images "
                   "(torchvision detection models); implied for torchvision detection names")
    p.add_argument("--batch-size", type=positive_int, default=1, help="the deployment batch size: the example input's "
                   "batch, the alignment probe's and the speed check's")
    p.add_argument("--threads", type=positive_int,
                   help="intra-op threads of torch, the alignment probe and the speed check")
    p.add_argument("--no-speed-check", action="store_true", help="skip the closing check that times the pruned "
                   "model against the unpruned one on the target runtime(s)")
    p.add_argument("--trained", action=argparse.BooleanOptionalAction, default=None,
                   help="declare whether the --weights were trained (recorded in model.json)")
    p.add_argument("--output", required=True, help="output directory (replaced atomically)")
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.add_argument("--json", help="also write the summary JSON here")
    p.add_argument("--changed-only", action="store_true", help="table shows only resized layers")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_prune)

    g = sub.add_parser("graph", help="show channel groups and what blocks them")
    model_args(g)
    g.add_argument("--verbose", action="store_true")
    g.set_defaults(func=cmd_graph)

    e = sub.add_parser("export", help="fold BN, export ONNX/OpenVINO/TensorRT and verify parity")
    e.add_argument("model", help=MODEL_HELP)
    e.add_argument("--model-arg", action="append", metavar="KEY=VALUE", help=MODEL_ARG_HELP)
    e.add_argument("--weights", help=WEIGHTS_HELP)
    e.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)
    e.add_argument("--input-size", help="input C,H,W (default: the model's natural size)")
    e.add_argument("--to", default="onnx,openvino,torch",
                   help="comma-separated targets: onnx, openvino, tensorrt, torch (the folded PyTorch model)")
    e.add_argument("--trained", action=argparse.BooleanOptionalAction, default=None,
                   help="declare whether the --weights were trained (recorded in the manifest; default: unknown "
                        "for a weights file, no for random initialisation)")
    e.add_argument("--output", required=True, help="bundle directory (replaced atomically)")
    e.add_argument("--force", action="store_true", help=FORCE_HELP)
    e.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"],
                   help="int8: post-training quantization per runtime (onnxruntime QDQ, OpenVINO NNCF, TensorRT "
                        "Q/DQ) from --calib-data; each target keeps INT8 only if within --max-accuracy-drop and "
                        "at least --min-int8-speedup faster than FP32, else ships FP32 (the manifest says why)")
    e.add_argument("--calib-data", help="INT8 calibration data: digits, digits:0-4, folder:PATH, digits-detect or "
                                        "npy:FILE (an (N, C, H, W) float array); its evaluation split scores "
                                        "accuracy and checks parity")
    e.add_argument("--calib-samples", type=positive_int, help="calibration samples (default 300)")
    e.add_argument("--calib-method", choices=["minmax", "entropy", "percentile"],
                   help="onnxruntime's calibrator (NNCF always uses min/max statistics)")
    e.add_argument("--max-accuracy-drop", type=fraction_below_one,
                   help="top-1 (a fraction, e.g. 0.01) INT8 may lose against FP32 on each runtime; over it, the "
                        "most sensitive layers stay FP32")
    e.add_argument("--min-int8-speedup", type=positive_float,
                   help="INT8 ships only if at least this much faster than FP32 on the runtime (default 1.1)")
    e.add_argument("--deploy-batch-size", type=positive_int,
                   help="the batch size the INT8 speed guard times at (default 1)")
    e.add_argument("--min-cosine", type=fraction, help="INT8 parity floor: cosine against FP32")
    e.add_argument("--min-top1-agreement", type=fraction,
                   help="INT8 parity floor: fraction of held-out samples with FP32's top-1")
    e.add_argument("--opset", type=positive_int, default=18)
    e.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"])
    e.add_argument("--batch-sizes", type=positive_int_list, default=(1, 8),
                   help="parity is checked at each of these batch sizes (default 1,8)")
    e.add_argument("--max-batch", type=positive_int, default=64, help="largest batch of the TensorRT profile")
    e.add_argument("--threads", type=positive_int, help="runtime threads for the parity check")
    e.add_argument("--no-fold", action="store_true", help="keep BatchNorm layers")
    e.set_defaults(func=cmd_export)

    b = sub.add_parser("bench", help="measure bundles: latency, throughput, memory, speedup over a baseline",
                       description=BENCH_DESCRIPTION)
    add_bench_arguments(b)
    b.set_defaults(func=cmd_bench)


    add_train_eval_parsers(sub)


    add_info_parser(sub)

    gt = sub.add_parser("gate", help="check latency/throughput/memory/accuracy/speedup budgets; exit 0 pass, "
                        "1 violated, 4 not measured, 2 bad input")
    gt.add_argument("budgets", help="budgets YAML file")
    gt.add_argument("--report", help="benchmark report (results.json or its directory)")
    gt.add_argument("--bundles", nargs="+", help="measure these bundles now instead of reading a report")
    gt.add_argument("--baseline", help="baseline bundle for speedup rules (with --bundles)")
    gt.add_argument("--accuracy", help="JSON {bundle: {runtime: top1}}, or a pipeline run (its summary.json)")
    gt.add_argument("--remeasure", action="store_true", help="re-measure failing rules once before deciding")

    gt.add_argument("--decision", choices=DECISIONS,
                    help="how a measurement is judged against its budget: point (the estimate must be within it), "
                    "strict (the conservative end of its CI must be: upper for max_*, lower for min_*), lenient "
                    "(fails only when the whole CI is beyond it); default: the budgets file's 'decision', else point")
    gt.add_argument("--threads", type=positive_int, help="runtime threads when measuring")
    gt.add_argument("--junit", help="write a JUnit XML file here")
    gt.add_argument("--json", help="write the gate report as JSON here")
    gt.add_argument("--quiet", action="store_true")
    gt.set_defaults(func=cmd_gate)

    for name, help_text in (("run", "run a pipeline file (default: the built-in demo)"),
                            ("demo", "run the built-in example end to end (same as `compressor run`)")):
        r = sub.add_parser(name, help=help_text)
        if name == "run":
            r.add_argument("pipeline", nargs="?", help="pipeline YAML file (default: the built-in demo)")
        r.add_argument("--output", help="run directory (default: runs/<pipeline name>)")
        r.add_argument("--force", action="store_true", help="replace an output directory holding another run")
        r.add_argument("--quick", action="store_true",
                       help="smoke-test size: one epoch per training phase, batch sizes 1,2, short timings")
        r.add_argument("--quiet", action="store_true", help="no progress bars")
        r.set_defaults(func=cmd_run, pipeline=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    def command() -> int:
        args = build_parser().parse_args(argv)
        return args.func(args)

    return run_command(command)  # the exit codes of errors: one table, compressor.common.errors.exit_code_for


if __name__ == "__main__":
    sys.exit(main())
