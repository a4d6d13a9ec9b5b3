"""``compressor train`` and ``compressor eval``: build configs, call the library, print the figures."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import parse_assignments

from compressor.app._cli_types import (fraction_below_one, non_negative_float, open_fraction, positive_float,
                                       positive_int, seed)
from compressor.training import is_main_process, parse_data_spec, PKSampler, ReIDLoss, train, TrainConfig, TrainResult
from compressor.app._evaluate import evaluate_classification, evaluate_reid_model
from compressor.common.outputs import atomic_directory, claim_output, FORCE_HELP
from compressor.deploy import save_model
from compressor.app._model_entry import (ALLOW_PICKLE_HELP, build_model, is_model_name, load_source, load_weights_,
                                         MODEL_ARG_HELP, MODEL_HELP, ModelSource, PICKLE_WARNING, saved_model_dir,
                                         WEIGHTS_HELP)

__all__ = ["add_parsers", "parse_assignments", "parse_input_size"]


def parse_input_size(text: str) -> tuple[int, ...]:
    """``"3,224,224"`` (or ``3x224x224``) -> ``(3, 224, 224)``; ValueError naming --input-size."""
    try:
        size = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise ValueError(f"--input-size must look like 3,224,224, got {text!r}") from None
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"--input-size must be C,H,W with positive values, got {text!r}")
    return size


def _size(text: str | None) -> tuple[int, ...] | None:
    return None if text is None else parse_input_size(text)


def cmd_train(args: argparse.Namespace) -> int:
    """Train or fine-tune a model; write checkpoints, history.json and the final model."""

    output = Path(args.output)
    claimed = claim_output(output, "train", force=args.force, inputs=(args.model, args.data.partition(":")[2] or None))
    spec = parse_data_spec(args.data, _size(args.input_size))
    train_set = spec.train_set()
    eval_sets = spec.eval_sets()
    reid = spec.task == "reid"
    outputs = train_set.num_ids if reid else train_set.num_classes
    torch.manual_seed(args.seed)  # the initial weights too: same seed, same run
    model, arch = _train_model(args, spec, outputs)
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.p * args.k if reid else args.batch_size, lr=args.lr,
        optimizer=args.optimizer, weight_decay=args.weight_decay, schedule=args.schedule,
        warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing, ema_decay=args.ema_decay,
        seed=args.seed, threads=args.threads, frozen=tuple(args.freeze or ()))
    sampler, loss_fn = None, None
    if reid:

        sampler = PKSampler(train_set.pids, args.p, args.k, seed=args.seed)
        loss_fn = ReIDLoss(label_smoothing=args.label_smoothing, triplet_weight=0.0 if _is_pcb(model) else 1.0)

        def eval_fn(m: torch.nn.Module) -> dict[str, float]:
            result = evaluate_reid_model(m, *eval_sets, metric=args.metric, threads=args.threads)
            return {"rank1": result.rank1, "mAP": result.mAP}
    else:
        def eval_fn(m: torch.nn.Module) -> dict[str, float]:
            result = evaluate_classification(m, eval_sets[0], threads=args.threads)
            return {"top1": result.top1, "top5": result.top5}

    # A new or empty --output is trained in place, so an interrupted run can be --resume'd. One holding an
    # earlier output (--resume continues it) is replaced only once the new training and model are complete.
    in_place = claimed == "new" or (args.resume and claimed == "own")

    def run(out: Path) -> TrainResult:
        result = train(model, train_set, config, loss_fn=loss_fn, eval_fn=eval_fn, output=out,
                       resume=args.resume and in_place, sampler=sampler, progress=not args.quiet)
        if is_main_process():  # under torchrun, rank 0 writes the model and reports
            model.compressor_metadata = {**(getattr(model, "compressor_metadata", None) or {}),
                                         "weights": {"origin": f"compressor train on {args.data}", "trained": True},
                                         "input_size": list(spec.input_size),
                                         "training": {"data": args.data, "epochs": result.epochs_completed,
                                                      "final_metrics": result.final_metrics}}
            save_model(model.eval(), out / "model", arch=arch)
        return result

    start = time.perf_counter()
    if in_place or not is_main_process():  # the other ranks write nothing
        result = run(output)
    else:
        done: list[TrainResult] = []
        atomic_directory(output, lambda tmp: done.append(run(tmp)))
        result = done[0]
    seconds = time.perf_counter() - start
    if not is_main_process():
        return 0
    saved = output / "model"
    metrics = ", ".join(f"{k} {v:.2%}" for k, v in (result.final_metrics or {}).items())
    print(f"trained {args.model} on {args.data} for {result.epochs_completed} epochs in {seconds:.1f}s: {metrics}")
    print(f"model saved to {saved}/; checkpoints and history.json in {output}/")
    return 0


def _is_pcb(model: torch.nn.Module) -> bool:
    return getattr(model, "parts", 0) > 0


def _train_model(args: argparse.Namespace, spec: Any, outputs: int) -> tuple[torch.nn.Module, dict[str, Any] | None]:
    """--model built for the data (a model name) or loaded as it is (a saved model, a pickled module), with
    its --weights; and its architecture spec (None: the saved model's own)."""

    if args.allow_pickle:
        print(PICKLE_WARNING, file=sys.stderr)
    model_args = parse_assignments(args.model_arg or [], "--model-arg")
    if saved_model_dir(args.model) is None and is_model_name(args.model):  # sized for the classes/identities
        model, arch = build_model(args.model, spec, outputs, model_args)
        if args.weights:
            load_weights_(model, args.weights, allow_pickle=args.allow_pickle, target=args.model)
        return model, arch
    loaded = load_source(ModelSource(args.model, model_args, weights=args.weights, allow_pickle=args.allow_pickle))
    return loaded.model, None


def _eval_source(args: argparse.Namespace) -> Any:
    """The directory itself (a bundle, a saved model, a train output: the evaluator opens it), or the model
    built from a model name with --model-arg/--weights."""

    if args.allow_pickle:
        print(PICKLE_WARNING, file=sys.stderr)
    if Path(args.path).is_dir() and not (args.model_arg or args.weights):
        return args.path
    model_args = parse_assignments(args.model_arg or [], "--model-arg")
    return load_source(ModelSource(args.path, model_args, weights=args.weights, allow_pickle=args.allow_pickle)).model


def cmd_eval(args: argparse.Namespace) -> int:
    """Accuracy of a saved model, a `compressor train` output or a bundle on a runtime."""

    spec = parse_data_spec(args.data, _size(args.input_size))
    sets = spec.eval_sets()
    source = _eval_source(args)
    if spec.task == "reid":
        result = evaluate_reid_model(source, *sets, metric=args.metric, runtime=args.runtime,
                                     batch_size=args.batch_size, threads=args.threads,
                                     allow_pickle=args.allow_pickle)
        summary: dict[str, Any] = {"task": "reid", **result.to_dict()}
        summary.pop("ap_per_query", None)
        line = (f"rank-1 {result.rank1:.2%}, rank-5 {result.rank5:.2%}, rank-10 {result.rank10:.2%}, "
                f"mAP {result.mAP:.2%} ({result.num_valid_queries} queries)")
    else:
        result = evaluate_classification(source, sets[0], runtime=args.runtime, batch_size=args.batch_size,
                                         threads=args.threads, allow_pickle=args.allow_pickle)
        summary = {"task": "classification", **result.to_dict()}
        line = (f"top-1 {result.top1:.2%}, top-5 {result.top5:.2%} on {result.samples} samples "
                f"({result.runtime}, {result.seconds:.2f}s)")
    summary.update({"schema_version": 1, "path": str(args.path), "data": args.data})
    print(f"{args.path} on {args.data}: {line}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    data_help = "digits (bundled, no download), folder:PATH (ImageFolder with train/ and val/), or market:PATH"
    t = sub.add_parser("train", help="train or fine-tune a model (digits, ImageFolder or Market-1501 data)")
    t.add_argument("--model", required=True, help=f"{MODEL_HELP}; a model name is built with the data's classes "
                   "(num_classes, or num_ids for ReID) and input channels")
    t.add_argument("--model-arg", action="append", metavar="KEY=VALUE", help=MODEL_ARG_HELP)
    t.add_argument("--weights", help=f"{WEIGHTS_HELP}: the starting point of the fine-tuning")
    t.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)
    t.add_argument("--data", default="digits", help=data_help)
    t.add_argument("--input-size", help="C,H,W (default: 3,32,32; 3,256,128 for market)")
    t.add_argument("--epochs", type=positive_int, default=10)
    t.add_argument("--batch-size", type=positive_int, default=64, help="per process (classification)")
    t.add_argument("--p", type=positive_int, default=8, help="ReID: identities per batch")
    t.add_argument("--k", type=positive_int, default=4, help="ReID: images per identity")
    t.add_argument("--lr", type=positive_float, default=0.05)
    t.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"])
    t.add_argument("--weight-decay", type=non_negative_float, default=5e-4)
    t.add_argument("--schedule", default="cosine", choices=["cosine", "step", "constant"])
    t.add_argument("--warmup-epochs", type=non_negative_float, default=0.0)
    t.add_argument("--label-smoothing", type=fraction_below_one, default=0.0)
    t.add_argument("--ema-decay", type=open_fraction, help="keep an EMA of the weights (e.g. 0.999)")
    t.add_argument("--freeze", action="append", help="parameter name prefix or regex to freeze (repeatable)")
    t.add_argument("--metric", default="euclidean", choices=["euclidean", "cosine"], help="ReID distance")
    t.add_argument("--seed", type=seed, default=0)
    t.add_argument("--threads", type=positive_int, help="torch intra-op threads")
    t.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint.pt")
    t.add_argument("--output", required=True, help="checkpoints, history.json and the final model (OUTPUT/model)")
    t.add_argument("--force", action="store_true", help=FORCE_HELP)
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="accuracy of a saved model, a train output or a bundle on a runtime")
    e.add_argument("path", help="saved model directory, `compressor train` output, bundle directory, or a model "
                   "name (zoo, torchvision:NAME, timm:NAME, package.module:factory) with --model-arg/--weights")
    e.add_argument("--model-arg", action="append", metavar="KEY=VALUE", help=MODEL_ARG_HELP)
    e.add_argument("--weights", help=WEIGHTS_HELP)
    e.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)
    e.add_argument("--data", default="digits", help=data_help)
    e.add_argument("--input-size", help="C,H,W (default: 3,32,32; 3,256,128 for market)")
    e.add_argument("--runtime", help="for a bundle: onnxruntime (default), openvino, tensorrt, torch")
    e.add_argument("--metric", default="euclidean", choices=["euclidean", "cosine"], help="ReID distance")
    e.add_argument("--batch-size", type=positive_int, default=256)
    e.add_argument("--threads", type=positive_int)
    e.add_argument("--json", help="also write the figures here")
    e.set_defaults(func=cmd_eval)
