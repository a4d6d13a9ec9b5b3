"""Accuracy of any model: a PyTorch module, a saved model directory, or an exported bundle on a runtime.

Deployed accuracy is measured on the artifact that ships: ``evaluate_classification("bundle/",
test_set, runtime="openvino")`` runs the bundle's OpenVINO IR, batch by batch, through the same
session class the benchmarks time. A module or a saved model directory runs in eager PyTorch.

* classification: top-1 and top-5 over a dataset of ``(image, label)`` items;
* person re-identification: embeddings of a query and a gallery set, then CMC rank-1/5/10 and mAP
  under the Market-1501 protocol (:func:`compressor.training._metrics.evaluate_reid`).
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compressor.deploy import SPEC_FILE
from runtimes import get_runtime, load_bundle, RUNTIME_TARGET, SessionConfig
from compressor.training import evaluate_reid, pairwise_distance, topk_accuracy

__all__ = ["ClassificationResult", "evaluate_classification", "evaluate_reid_model", "open_predictor",
           "resolve_model_path"]

_BUNDLE_MANIFEST = "manifest.json"
_OUTPUTS = ("first", "all")  # what open_predictor's function returns
_TRAINED_MODEL_DIR = "model"  # where `compressor train` saves the final model inside its output


@dataclass(frozen=True)
class ClassificationResult:
    """Top-k accuracy (fractions in [0, 1]) of one model on one dataset.

    Attributes:
        top1, top5: accuracy; top5 is top-min(5, classes).
        samples: how many samples were scored.
        seconds: wall time of the whole evaluation (loading excluded).
        source: what was evaluated (a path, or the module's class name).
        runtime: ``"torch"`` for modules and saved models, else the runtime that ran the bundle.
    """

    top1: float
    top5: float
    samples: int
    seconds: float
    source: str
    runtime: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_model_path(path: str | Path) -> tuple[str, Path]:
    """What a path holds: ``("bundle", dir)``, ``("saved", dir)`` (a saved model directory, or the
    ``model/`` inside ``compressor train``'s output).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: it is neither a bundle nor a saved model; the message says what was looked for.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist")
    if (root / _BUNDLE_MANIFEST).is_file():
        return "bundle", root
    for candidate in (root, root / _TRAINED_MODEL_DIR):
        if (candidate / SPEC_FILE).is_file():
            return "saved", candidate
    raise ValueError(f"{root} is neither a bundle ({_BUNDLE_MANIFEST}) nor a saved model ({SPEC_FILE}, or "
                     f"{_TRAINED_MODEL_DIR}/{SPEC_FILE} as `compressor train` writes it)")


@contextlib.contextmanager
def open_predictor(source: nn.Module | str | Path, *, runtime: str | None = None, device: str = "cpu",
                   threads: int | None = None, allow_pickle: bool = False,
                   outputs: str = "first") -> Iterator[tuple[Callable[[np.ndarray], Any], str]]:
    """A function from a float32 batch to the model's output, and the runtime's name.

    With ``outputs="first"`` (the default) the function returns the first output as one float32
    array (a classifier's logits). With ``outputs="all"`` it returns every output as a list of
    arrays (``Session.run_all``: a detector's raw head outputs, for its decoder), in the order of
    the model's flattened outputs: a tuple's order, a dict's insertion order; for a bundle, the
    order of its manifest's ``outputs``.

    Args:
        source: an ``nn.Module``, a saved model directory, or a bundle directory.
        runtime: for a bundle, the runtime that runs it (default ``"onnxruntime"``); for a module or
            a saved model only ``None`` or ``"torch"``.
        device, threads: the session's device and intra-op threads.
        allow_pickle: let a pickled saved model load (runs code from the file).
        outputs: ``"first"`` or ``"all"``, as above.

    Raises:
        ValueError: a runtime other than torch for a module or a saved model, a bundle without
            that runtime's artifact, or an unknown ``outputs``.
        runtimes.BundleError: the bundle is damaged or failed its parity check.

    The function raises ValueError, naming the batch's shape, when the model fails on a batch
    (mostly data of a size it does not take).
    """

    if outputs not in _OUTPUTS:
        raise ValueError(f"outputs must be one of {', '.join(map(repr, _OUTPUTS))}, got {outputs!r}")
    if isinstance(source, nn.Module):
        if runtime not in (None, "torch"):
            raise ValueError(f"a PyTorch module runs on torch, not {runtime!r}; export a bundle to evaluate "
                             f"it on {runtime}")
        session = get_runtime("torch").load(source, SessionConfig(device=device, threads=threads))
        name = "torch"
    else:
        kind, path = resolve_model_path(source)
        if kind == "saved":
            if runtime not in (None, "torch"):
                raise ValueError(f"{path} is a saved PyTorch model, which runs on torch; export it "
                                 f"(`compressor export {path} --output bundle/`) to evaluate it on {runtime}")
            session = get_runtime("torch", allow_pickle=allow_pickle).load(
                path, SessionConfig(device=device, threads=threads))
            name = "torch"
        else:
            name = runtime or "onnxruntime"
            bundle = load_bundle(path)
            target = RUNTIME_TARGET.get(name)
            if target is None:
                get_runtime(name)  # an unknown name fails here, listing the known ones
            if target not in bundle.manifest.get("artifacts", {}):
                raise ValueError(f"bundle {path} has no {target!r} artifact for runtime {name!r}; it has "
                                 f"{sorted(bundle.manifest.get('artifacts', {}))}")
            precision = (bundle.manifest.get("artifact_precision") or {}).get(
                target, bundle.manifest.get("precision", "fp32"))  # an INT8 bundle may ship FP32 on a runtime
            session = get_runtime(name).load(bundle.artifact(target),
                                             SessionConfig(device=device, threads=threads, precision=precision))

    run = session.run_all if outputs == "all" else session.run

    def predict(batch: np.ndarray) -> Any:
        try:
            return run(batch)
        except (MemoryError, torch.OutOfMemoryError):
            raise
        except Exception as exc:  # mostly data of a size or channel count the model does not take
            raise ValueError(f"{_describe(source)} failed on {name} with a batch of shape {list(batch.shape)} "
                             f"(does the data's C,H,W match the model's input?): {type(exc).__name__}: {exc}") from exc

    try:
        yield predict, name
    finally:
        session.close()


def _batches(dataset: Any, batch_size: int) -> Iterator[tuple[np.ndarray, list[Any]]]:
    """``(images as float32 numpy, [other fields as numpy])`` per batch, in dataset order."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    for batch in loader:
        if not isinstance(batch, (list, tuple)) or len(batch) < 2:
            raise ValueError("evaluation datasets yield (image, label, ...) items")
        images, *rest = batch
        yield images.float().numpy(), [r.numpy() if isinstance(r, torch.Tensor) else np.asarray(r) for r in rest]


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def evaluate_classification(source: nn.Module | str | Path, dataset: Any, *, runtime: str | None = None,
                            batch_size: int = 256, device: str = "cpu", threads: int | None = None,
                            allow_pickle: bool = False) -> ClassificationResult:
    """Top-1/top-5 accuracy of ``source`` (module, saved model or bundle) on ``dataset``.

    Args:
        source: see :func:`open_predictor`.
        dataset: yields ``(image tensor [C, H, W], int label)`` items.
        runtime: for a bundle, the runtime that runs it (default onnxruntime).
        batch_size, device, threads: how it runs.

    Raises:
        ValueError: an empty dataset, a bad batch size, or the model's output is not
            ``[batch, classes]`` logits.
    """

    _check_batch_size(batch_size)
    logits, labels = [], []
    with open_predictor(source, runtime=runtime, device=device, threads=threads,
                        allow_pickle=allow_pickle) as (predict, name):
        start = time.perf_counter()
        for images, (targets, *_) in _batches(dataset, batch_size):
            out = predict(images)
            if out.ndim != 2 or out.shape[0] != len(images):
                raise ValueError(f"{_describe(source)} returned shape {list(out.shape)} for a batch of "
                                 f"{len(images)}; classification needs [batch, classes] logits")
            logits.append(out)
            labels.append(targets)
        seconds = time.perf_counter() - start
    if not logits:
        raise ValueError("the evaluation dataset is empty")
    scores = topk_accuracy(torch.from_numpy(np.concatenate(logits)), torch.from_numpy(np.concatenate(labels)),
                           ks=(1, 5))
    return ClassificationResult(top1=scores[1], top5=scores[5], samples=int(sum(len(t) for t in labels)),
                                seconds=seconds, source=_describe(source), runtime=name)


def _embed(predict: Callable[[np.ndarray], np.ndarray], dataset: Any,
           batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    features, pids, camids = [], [], []
    for images, rest in _batches(dataset, batch_size):
        if len(rest) < 2:
            raise ValueError("ReID datasets yield (image, pid, camid) items")
        out = predict(images)
        features.append(out.reshape(len(images), -1))
        pids.append(rest[0])
        camids.append(rest[1])
    if not features:
        raise ValueError("a ReID evaluation set is empty")
    return np.concatenate(features), np.concatenate(pids), np.concatenate(camids)


def evaluate_reid_model(source: nn.Module | str | Path, query: Any, gallery: Any, *, metric: str = "euclidean",
                        runtime: str | None = None, batch_size: int = 128, device: str = "cpu",
                        threads: int | None = None, allow_pickle: bool = False) -> Any:
    """CMC rank-1/5/10 and mAP of ``source`` (in eval mode it returns embeddings) on a query and a
    gallery set of ``(image, pid, camid)`` items, with the Market-1501 protocol.

    Returns:
        :class:`compressor.training._metrics.ReIDResult`.
    """

    _check_batch_size(batch_size)
    with open_predictor(source, runtime=runtime, device=device, threads=threads,
                        allow_pickle=allow_pickle) as (predict, _):
        q_feat, q_pids, q_cams = _embed(predict, query, batch_size)
        g_feat, g_pids, g_cams = _embed(predict, gallery, batch_size)
    distances = pairwise_distance(q_feat, g_feat, metric=metric)
    return evaluate_reid(distances, q_pids, g_pids, q_cams, g_cams)


def _describe(source: Any) -> str:
    return type(source).__name__ if isinstance(source, nn.Module) else str(source)
