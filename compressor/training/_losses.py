"""Training losses for fine-tuning pruned models: classification CE and the ReID ID + triplet loss.

"Exploiting prunability for person re-identification" (Masson et al. 2021, a survey of pruning
for ReID) fine-tunes two ReID baselines after pruning:

* **BNNeck** (Luo et al. 2019): label-smoothed cross-entropy on the logits plus the batch-hard
  triplet loss (Hermans et al. 2017, "Exploiting prunability" Table 1 ``L_TBH``) on the pre-neck global feature.
* **PCB** (Sun et al. 2018): one cross-entropy per horizontal part, averaged; PCB trains with
  the ID loss only, so use ``ReIDLoss(triplet_weight=0)`` for it.

The train-mode outputs these losses accept are the ones of ``models.create_model("reid_resnet50")``:
``(logits (N, ids), features (N, D))`` for BNNeck, ``(list of P logits, features (N, D))`` for PCB.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ReIDLoss",
    "ReIDLossParts",
    "batch_hard_triplet_loss",
    "classification_loss",
    "feature_distance_matrix",
    "hardest_pairs",
]

DISTANCES = ("euclidean", "cosine")
# Squared distances below this are clamped before the square root: d/dx sqrt(x) is infinite at 0,
# and the clamp's zero gradient there keeps coincident features (distance 0) finite.
_MIN_SQUARED_DISTANCE = 1e-12


def _check_batch(features: torch.Tensor, pids: torch.Tensor, min_samples: int = 2) -> None:
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"features must be a 2-D tensor (N, D), got {shape}")
    if not isinstance(pids, torch.Tensor) or pids.dim() != 1 or pids.shape[0] != features.shape[0]:
        shape = tuple(pids.shape) if isinstance(pids, torch.Tensor) else type(pids).__name__
        raise ValueError(f"pids must be a 1-D tensor (N,) matching features {tuple(features.shape)}, got {shape}")
    if pids.is_floating_point() or pids.is_complex():
        raise ValueError(f"pids must be an integer tensor, got dtype {pids.dtype}")
    if features.shape[0] < min_samples:
        raise ValueError(f"need at least {min_samples} samples, got features {tuple(features.shape)}")


def feature_distance_matrix(features: torch.Tensor, distance: str = "euclidean") -> torch.Tensor:
    """All-pairs distances ``(N, N)`` between the rows of ``features`` ``(N, D)``, differentiable.

    Args:
        features: ``(N, D)`` embeddings.
        distance: ``"euclidean"`` (L2 distance, not squared) or ``"cosine"`` (1 - cosine similarity
            of the L2-normalised rows, in [0, 2]).

    The Euclidean distance expands ``|a|^2 + |b|^2 - 2ab`` and clamps it at 1e-12 before the square
    root, so coincident rows give a finite (zero) gradient instead of NaN. Half-precision features
    are computed in float32.

    Raises:
        ValueError: ``features`` is not 2-D, or ``distance`` is unknown.
    """
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"features must be a 2-D tensor (N, D), got {shape}")
    if features.dtype in (torch.float16, torch.bfloat16):
        features = features.float()  # |a|^2 + |b|^2 - 2ab cancels badly in half precision (autocast)
    if distance == "euclidean":
        squared_norms = features.pow(2).sum(dim=1)
        squared = squared_norms[:, None] + squared_norms[None, :] - 2.0 * features @ features.t()
        return squared.clamp(min=_MIN_SQUARED_DISTANCE).sqrt()
    if distance == "cosine":
        unit = F.normalize(features, dim=1)
        return 1.0 - unit @ unit.t()
    raise ValueError(f"unknown distance {distance!r}; known: {', '.join(DISTANCES)}")


def _mine(distances: torch.Tensor, pids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hardest positive / negative index per anchor row of ``distances``, -1 where there is none."""
    same = pids[:, None] == pids[None, :]
    self_pair = torch.eye(len(pids), dtype=torch.bool, device=pids.device)
    positive_mask = same & ~self_pair
    negative_mask = ~same
    with torch.no_grad():
        # Hermans et al. 2017: hardest positive = farthest same-id sample, hardest negative = closest
        # other-id sample. Ties go to whichever index torch.max/min returns.
        positive = distances.masked_fill(~positive_mask, float("-inf")).argmax(dim=1)
        negative = distances.masked_fill(~negative_mask, float("inf")).argmin(dim=1)
    missing = torch.full_like(positive, -1)
    positive = torch.where(positive_mask.any(dim=1), positive, missing)
    negative = torch.where(negative_mask.any(dim=1), negative, missing)
    return positive, negative


def hardest_pairs(
    features: torch.Tensor, pids: torch.Tensor, distance: str = "euclidean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch-hard mining: for each anchor, the index of its hardest positive and hardest negative.

    Args:
        features: ``(N, D)`` embeddings.
        pids: ``(N,)`` integer identity labels.
        distance: ``"euclidean"`` or ``"cosine"`` (see :func:`feature_distance_matrix`).

    Returns:
        ``(positive_index, negative_index)``, two ``(N,)`` int64 tensors. The hardest positive is the
        farthest *other* sample with the anchor's pid, the hardest negative the closest sample with a
        different pid. An anchor with no other sample of its pid gets positive index -1; one with no
        sample of another pid gets negative index -1.

    Raises:
        ValueError: shapes do not match, fewer than 2 samples, or unknown ``distance``.
    """
    _check_batch(features, pids)
    pids = pids.to(features.device)
    return _mine(feature_distance_matrix(features.detach(), distance), pids)


def batch_hard_triplet_loss(
    features: torch.Tensor,
    pids: torch.Tensor,
    margin: float = 0.3,
    *,
    distance: str = "euclidean",
    soft: bool = False,
) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017; "Exploiting prunability" Table 1 ``L_TBH``).

    ``mean over anchors of [margin + max_p d(a, p) - min_n d(a, n)]_+`` with ``p`` ranging over the
    anchor's other same-pid samples and ``n`` over the other-pid samples (see :func:`hardest_pairs`).
    With ``soft=True`` the hinge becomes the soft margin ``softplus(d_ap - d_an)`` of Hermans et al.,
    which has no margin: ``margin`` is then not used.

    Anchors that have no positive or no negative in the batch are left out of the mean (a PK batch
    sampler with K >= 2 images per identity and P >= 2 identities gives every anchor both).

    Args:
        features: ``(N, D)`` embeddings (BNNeck: the pre-neck global feature).
        pids: ``(N,)`` integer identity labels.
        margin: hinge margin in distance units, >= 0 (0.3 in Luo et al. 2019).
        distance: ``"euclidean"`` or ``"cosine"``.
        soft: use the softplus soft margin instead of the hinge.

    Returns:
        A scalar tensor.

    Raises:
        ValueError: shapes do not match, negative margin, unknown distance, or no anchor in the batch
            has both a positive and a negative.
    """
    _check_batch(features, pids)
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    pids = pids.to(features.device)
    distances = feature_distance_matrix(features, distance)
    positive, negative = _mine(distances, pids)
    valid = (positive >= 0) & (negative >= 0)
    if not bool(valid.any()):
        raise ValueError(
            f"no anchor has both a positive and a negative in the batch (pids {pids.tolist()}); "
            "sample at least 2 identities with at least 2 images each"
        )
    anchors = valid.nonzero().squeeze(1)
    gap = distances[anchors, positive[anchors]] - distances[anchors, negative[anchors]]
    if soft:
        return F.softplus(gap).mean()
    return F.relu(gap + margin).mean()


def classification_loss(label_smoothing: float = 0.0) -> nn.CrossEntropyLoss:
    """Cross-entropy for classification models, with torch's own label smoothing.

    Raises:
        ValueError: ``label_smoothing`` is outside [0, 1).
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)


@dataclass(frozen=True)
class ReIDLossParts:
    """The terms of the last :class:`ReIDLoss` call, detached (0-dim tensors, no host sync).

    ``total = id_weight * id + triplet_weight * triplet``. ``triplet`` is NaN when
    ``triplet_weight == 0``, because the term is then not computed.
    """

    total: torch.Tensor
    id: torch.Tensor
    triplet: torch.Tensor

    def to_dict(self) -> dict[str, float]:
        return {"total": float(self.total), "id": float(self.id), "triplet": float(self.triplet)}


class ReIDLoss(nn.Module):
    """ID (cross-entropy) + batch-hard triplet loss for the train-mode output of a ReID model.

    * BNNeck output ``(logits (N, C), features (N, D))``: label-smoothed CE on the logits plus the
      triplet loss on the (pre-neck) features (Luo et al. 2019).
    * PCB output ``(list of P logits (N, C), features (N, D))``: the mean of the P part CEs (Sun et al.
      2018), plus the triplet loss on the concatenated part features only when ``triplet_weight > 0``.
      PCB trains with the ID loss alone: build ``ReIDLoss(triplet_weight=0)`` for it.

    ``forward`` returns the scalar total, so it drops into a training loop like any torch criterion;
    the terms of the last call are in ``self.last`` (:class:`ReIDLossParts`).

    Args:
        id_weight: weight of the ID loss, >= 0.
        triplet_weight: weight of the triplet loss, >= 0 (0 skips it).
        margin: triplet margin (Euclidean distance), >= 0.
        label_smoothing: CE label smoothing in [0, 1) (0.1 in Luo et al. 2019), applied to every part.

    Raises:
        ValueError: a weight is negative or both are 0, negative margin, smoothing outside [0, 1);
            in ``forward``, an output that is not ``(logits, features)`` or whose batch size or
            number of classes does not match ``pids``.
    """

    def __init__(
        self,
        id_weight: float = 1.0,
        triplet_weight: float = 1.0,
        margin: float = 0.3,
        label_smoothing: float = 0.1,
    ) -> None:
        super().__init__()
        if id_weight < 0 or triplet_weight < 0:
            raise ValueError(f"loss weights must be >= 0, got id_weight={id_weight}, triplet_weight={triplet_weight}")
        if id_weight == 0 and triplet_weight == 0:
            raise ValueError("id_weight and triplet_weight are both 0: the loss would be constant")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.id_weight = float(id_weight)
        self.triplet_weight = float(triplet_weight)
        self.margin = float(margin)
        self.label_smoothing = float(label_smoothing)
        self.last: ReIDLossParts | None = None

    def extra_repr(self) -> str:
        return (
            f"id_weight={self.id_weight}, triplet_weight={self.triplet_weight}, "
            f"margin={self.margin}, label_smoothing={self.label_smoothing}"
        )

    def _id_loss(self, logits: torch.Tensor | Sequence[torch.Tensor], pids: torch.Tensor) -> torch.Tensor:
        parts = [logits] if isinstance(logits, torch.Tensor) else list(logits)
        if not parts:
            raise ValueError("the model returned an empty list of part logits")
        for part in parts:
            if not isinstance(part, torch.Tensor) or part.dim() != 2 or part.shape[0] != pids.shape[0]:
                shape = tuple(part.shape) if isinstance(part, torch.Tensor) else type(part).__name__
                raise ValueError(f"logits must be (N, num_ids) with N = len(pids) = {pids.shape[0]}, got {shape}")
        num_ids = {part.shape[1] for part in parts}
        if len(num_ids) != 1:
            raise ValueError(f"part logits disagree on num_ids: {[tuple(part.shape) for part in parts]}")
        low, high = int(pids.min()), int(pids.max())  # an out-of-range target is a device assert on CUDA
        if low < 0 or high >= parts[0].shape[1]:
            raise ValueError(
                f"pids must lie in [0, {parts[0].shape[1]}) for logits {tuple(parts[0].shape)}, got [{low}, {high}]"
            )
        # Sun et al. 2018: each part has its own classifier; the part CEs are averaged.
        losses = [F.cross_entropy(part, pids, label_smoothing=self.label_smoothing) for part in parts]
        return torch.stack(losses).mean()

    def forward(
        self, output: tuple[torch.Tensor | Sequence[torch.Tensor], torch.Tensor], pids: torch.Tensor
    ) -> torch.Tensor:
        """Total loss of a train-mode ReID ``output`` for identity labels ``pids`` ``(N,)``."""
        if isinstance(output, torch.Tensor) or not isinstance(output, (tuple, list)) or len(output) != 2:
            got = f"a tensor {tuple(output.shape)}" if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(
                f"ReIDLoss needs the train-mode output (logits, features), got {got}; "
                "is the model in eval mode, or a classification model?"
            )
        logits, features = output
        _check_batch(features, pids, min_samples=2 if self.triplet_weight > 0 else 1)
        pids = pids.to(features.device)
        id_loss = self._id_loss(logits, pids)
        total = self.id_weight * id_loss
        if self.triplet_weight > 0:
            triplet = batch_hard_triplet_loss(features, pids, self.margin)
            total = total + self.triplet_weight * triplet
            triplet_part = triplet.detach()
        else:
            triplet_part = torch.full((), float("nan"), device=features.device)
        self.last = ReIDLossParts(total=total.detach(), id=id_loss.detach(), triplet=triplet_part)
        return total
