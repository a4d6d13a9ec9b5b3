"""Accuracy of a (pruned) model: top-k for classification, CMC and mAP for person ReID.

ReID follows the Market-1501 evaluation of Zheng et al. 2015 (the protocol that "Exploiting
prunability for person re-identification", Masson et al. 2021, reports):
for each query, the gallery images with the query's identity *and* camera are dropped (they are
trivial matches), as are junk images (pid -1); distractors (pid 0) stay as wrong matches. All
figures are fractions in [0, 1], not percentages.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from compressor.graph import evaluating

__all__ = ["METRICS", "ReIDResult", "evaluate_reid", "pairwise_distance", "topk_accuracy"]

METRICS = ("euclidean", "cosine")
JUNK_PID = -1  # Market-1501 "junk" detections: never a match, removed from every ranking


def _to_numpy(array: Any) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu()
        return (array.float() if array.dtype == torch.bfloat16 else array).numpy()  # numpy has no bfloat16
    return np.asarray(array)


def _check_nonempty_2d(array: np.ndarray, name: str) -> None:
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty: shape {array.shape}")


def topk_accuracy(
    logits: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray, ks: Iterable[int] = (1, 5)
) -> dict[int, float]:
    """Fraction of samples whose target is among the ``k`` highest logits, for each ``k`` in ``ks``.

    Args:
        logits: ``(N, C)`` scores.
        targets: ``(N,)`` integer class indices in ``[0, C)``.
        ks: the ``k`` values, each >= 1. A ``k`` larger than ``C`` is clipped to ``C`` (so its
            accuracy is 1.0) but keeps its requested key in the result.

    Returns:
        ``{k: accuracy}`` with accuracies as fractions in [0, 1]. Tied logits are ranked in the
        order ``torch.topk`` returns them.

    Raises:
        ValueError: empty input, shapes that do not match, a ``k`` < 1, or a target outside ``[0, C)``.
    """
    logits = torch.as_tensor(logits)
    targets = torch.as_tensor(targets)
    if logits.dim() != 2 or logits.numel() == 0:
        raise ValueError(f"logits must be a non-empty 2-D (N, C) array, got shape {tuple(logits.shape)}")
    if targets.shape != (logits.shape[0],):
        raise ValueError(f"targets must have shape (N,) = ({logits.shape[0]},), got {tuple(targets.shape)}")
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be a non-empty list of k >= 1, got {ks}")
    num_classes = logits.shape[1]
    targets = targets.to(logits.device).long()
    if int(targets.min()) < 0 or int(targets.max()) >= num_classes:
        raise ValueError(f"targets must lie in [0, {num_classes}), got [{int(targets.min())}, {int(targets.max())}]")
    top = logits.topk(min(max(ks), num_classes), dim=1).indices  # (N, max k), best first
    hits = top == targets[:, None]
    return {k: float(hits[:, : min(k, num_classes)].any(dim=1).float().mean()) for k in ks}


def pairwise_distance(
    query: torch.Tensor | np.ndarray, gallery: torch.Tensor | np.ndarray, metric: str = "euclidean"
) -> np.ndarray:
    """Distance matrix ``(Nq, Ng)`` between query and gallery features.

    Args:
        query: ``(Nq, D)`` features.
        gallery: ``(Ng, D)`` features.
        metric: ``"euclidean"`` (L2 distance, not squared) or ``"cosine"`` (1 - cosine similarity of
            the L2-normalised features, in [0, 2]; a zero feature has similarity 0 to everything).

    Returns:
        float32 array (float64 if either input is float64).

    Raises:
        ValueError: empty or non-2-D inputs, different feature sizes, or an unknown metric.
    """
    query = _to_numpy(query)
    gallery = _to_numpy(gallery)
    _check_nonempty_2d(query, "query")
    _check_nonempty_2d(gallery, "gallery")
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(f"query {query.shape} and gallery {gallery.shape} have different feature sizes")
    dtype = np.result_type(query.dtype, gallery.dtype, np.float32)
    query, gallery = query.astype(dtype, copy=False), gallery.astype(dtype, copy=False)
    if metric == "euclidean":
        squared = (
            np.square(query).sum(axis=1)[:, None] + np.square(gallery).sum(axis=1)[None, :] - 2.0 * query @ gallery.T
        )
        return np.sqrt(np.maximum(squared, 0.0))  # rounding can make |a|^2 + |b|^2 - 2ab slightly negative
    if metric == "cosine":
        eps = np.finfo(dtype).tiny

        def normalise(x: np.ndarray) -> np.ndarray:
            return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)

        return 1.0 - normalise(query) @ normalise(gallery).T
    raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")


@dataclass(frozen=True)
class ReIDResult:
    """Market-1501 retrieval accuracy; every figure is a fraction in [0, 1].

    ``cmc[k - 1]`` is the fraction of valid queries whose first correct match is at rank <= k.
    ``ap_per_query`` has one entry per query, NaN for the queries skipped for lack of a valid match.
    """

    rank1: float
    rank5: float
    rank10: float
    mAP: float
    cmc: list[float]
    num_valid_queries: int
    num_queries: int
    ap_per_query: list[float]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict; the NaN of skipped queries in ``ap_per_query`` becomes ``None``."""
        out = asdict(self)
        out["ap_per_query"] = [None if np.isnan(ap) else ap for ap in self.ap_per_query]
        return out


def _check_labels(array: np.ndarray, name: str, length: int, distmat_shape: tuple[int, ...]) -> None:
    if array.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},) to match distmat {distmat_shape}, got {array.shape}")


def evaluate_reid(
    distmat: torch.Tensor | np.ndarray,
    query_pids: torch.Tensor | np.ndarray,
    gallery_pids: torch.Tensor | np.ndarray,
    query_camids: torch.Tensor | np.ndarray,
    gallery_camids: torch.Tensor | np.ndarray,
    *,
    max_rank: int = 10,
) -> ReIDResult:
    """CMC and mAP under the Market-1501 protocol (Zheng et al. 2015).

    For each query the gallery is ranked by increasing distance with a stable sort
    (``argsort(kind="stable")``: tied gallery items keep their gallery order). Gallery items with
    the query's pid *and* camera, and junk items (pid -1), are removed from the ranking; distractors
    (pid 0) stay as wrong matches. A query left with no correct match is skipped (it counts in
    ``num_queries`` but not in ``num_valid_queries``).

    * CMC rank-k: fraction of valid queries whose first correct match is at rank <= k.
    * AP of a query: ``(1 / M) * sum_i (i / r_i)``, where ``r_i`` is the rank of its i-th of M
      correct matches (the mean of the precision at each correct match). mAP: mean AP over valid
      queries.

    Args:
        distmat: ``(Nq, Ng)`` query-to-gallery distances (smaller = more similar), no NaN.
        query_pids, query_camids: ``(Nq,)`` integer identity and camera labels.
        gallery_pids, gallery_camids: ``(Ng,)`` integer identity and camera labels.
        max_rank: length of the returned CMC curve, >= 10 (so ``rank10`` is defined).

    Raises:
        ValueError: empty or mismatched shapes, NaN distances, ``max_rank`` < 10, or no query with
            a valid match in the gallery.
    """
    distmat = _to_numpy(distmat)
    _check_nonempty_2d(distmat, "distmat")
    num_queries, num_gallery = distmat.shape
    query_pids = _to_numpy(query_pids)
    gallery_pids = _to_numpy(gallery_pids)
    query_camids = _to_numpy(query_camids)
    gallery_camids = _to_numpy(gallery_camids)
    _check_labels(query_pids, "query_pids", num_queries, distmat.shape)
    _check_labels(query_camids, "query_camids", num_queries, distmat.shape)
    _check_labels(gallery_pids, "gallery_pids", num_gallery, distmat.shape)
    _check_labels(gallery_camids, "gallery_camids", num_gallery, distmat.shape)
    if max_rank < 10:
        raise ValueError(f"max_rank must be >= 10 so that rank10 is defined, got {max_rank}")
    if np.isnan(distmat).any():
        raise ValueError(f"distmat {distmat.shape} contains NaN")

    cmc_sum = np.zeros(max_rank, dtype=np.float64)
    ap_per_query = np.full(num_queries, np.nan)
    for q in range(num_queries):
        order = np.argsort(distmat[q], kind="stable")
        pids, camids = gallery_pids[order], gallery_camids[order]
        trivial = (pids == query_pids[q]) & (camids == query_camids[q])
        matches = (pids == query_pids[q])[~trivial & (pids != JUNK_PID)]
        if not matches.any():
            continue
        match_ranks = np.flatnonzero(matches) + 1  # 1-based rank of each correct match
        cmc_sum[match_ranks[0] - 1 :] += 1.0
        ap_per_query[q] = float(np.mean(np.arange(1, len(match_ranks) + 1) / match_ranks))

    valid = ~np.isnan(ap_per_query)
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError(
            f"none of the {num_queries} queries has a correct match in the gallery once same-pid-same-camera "
            "and junk (pid -1) items are removed"
        )
    cmc = (cmc_sum / num_valid).tolist()
    return ReIDResult(
        rank1=cmc[0],
        rank5=cmc[4],
        rank10=cmc[9],
        mAP=float(ap_per_query[valid].mean()),
        cmc=cmc,
        num_valid_queries=num_valid,
        num_queries=num_queries,
        ap_per_query=ap_per_query.tolist(),
    )


def module_top1(model: torch.nn.Module, dataset: Any, batch_size: int = 256) -> float:
    """Top-1 accuracy of a PyTorch module on ``(image, label, ...)`` items, in eval mode, without gradients.

    What the training strategies use to compare candidates; accuracy of a saved model or of a
    bundle on a runtime is :func:`compressor.evaluate_classification`'s job.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    logits, labels = [], []
    with evaluating(model), torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            images = torch.stack([torch.as_tensor(item[0]).float() for item in items]).to(device)
            logits.append(model(images).float().cpu())
            labels.append(torch.as_tensor([int(item[1]) for item in items]))
    if not logits:
        raise ValueError("the evaluation dataset is empty")
    return topk_accuracy(torch.cat(logits), torch.cat(labels), ks=(1,))[1]

