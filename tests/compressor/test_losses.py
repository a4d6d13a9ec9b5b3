"""Batch-hard triplet mining and loss on hand-made points; ReID ID + triplet loss on the zoo ReID model."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compressor.training._losses import (
    ReIDLoss,
    batch_hard_triplet_loss,
    classification_loss,
    feature_distance_matrix,
    hardest_pairs,
)
from models import create_model

# Six 2-D points, three identities. Pairwise Euclidean distances (used in the comments below):
#   d01=1  d02=5  d03=2   d04=3    d05=sqrt50
#   d12=sqrt26  d13=sqrt5  d14=2  d15=sqrt41
#   d23=3  d24=sqrt34  d25=5
#   d34=sqrt13  d35=sqrt34
#   d45=sqrt29
POINTS = torch.tensor([[0.0, 0.0], [0.0, 1.0], [5.0, 0.0], [2.0, 0.0], [0.0, 3.0], [5.0, 5.0]])
PIDS = torch.tensor([0, 0, 0, 1, 1, 2])
# anchor 0: positives 1 (1), 2 (5)          -> 2; negatives 3 (2), 4 (3), 5 (7.07)    -> 3
# anchor 1: positives 0 (1), 2 (5.10)       -> 2; negatives 3 (2.24), 4 (2), 5 (6.40) -> 4
# anchor 2: positives 0 (5), 1 (5.10)       -> 1; negatives 3 (3), 4 (5.83), 5 (5)    -> 3
# anchor 3: positive 4 (3.61)               -> 4; negatives 0 (2), 1 (2.24), 2 (3), 5 -> 0
# anchor 4: positive 3 (3.61)               -> 3; negatives 0 (3), 1 (2), 2, 5        -> 1
# anchor 5: pid 2 has one image: no positive (-1); negatives: 2 (5) is the closest  -> 2
EXPECTED_POSITIVE = [2, 2, 1, 4, 3, -1]
EXPECTED_NEGATIVE = [3, 4, 3, 0, 1, 2]
# d(anchor, hardest positive) - d(anchor, hardest negative) for the five valid anchors 0..4
GAPS = [5 - 2, math.sqrt(26) - 2, math.sqrt(26) - 3, math.sqrt(13) - 2, math.sqrt(13) - 2]


def test_distance_matrix_on_hand_points():
    distances = feature_distance_matrix(POINTS)
    assert distances[0, 1].item() == pytest.approx(1.0, abs=1e-5)
    assert distances[1, 2].item() == pytest.approx(math.sqrt(26), abs=1e-5)
    assert distances[4, 5].item() == pytest.approx(math.sqrt(29), abs=1e-5)
    cosine = feature_distance_matrix(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]]), "cosine")
    torch.testing.assert_close(cosine, torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 0.0]]))


def test_mining_picks_the_hand_identified_hardest_pairs():
    positive, negative = hardest_pairs(POINTS, PIDS)
    assert positive.tolist() == EXPECTED_POSITIVE
    assert negative.tolist() == EXPECTED_NEGATIVE


def test_loss_equals_hand_computation():
    margin = 0.3
    # every gap + 0.3 is positive, so the hinge is active for all five valid anchors; anchor 5 is left out
    expected = sum(gap + margin for gap in GAPS) / 5
    loss = batch_hard_triplet_loss(POINTS, PIDS, margin)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    soft = batch_hard_triplet_loss(POINTS, PIDS, margin, soft=True)  # Hermans et al.: softplus, no margin
    assert soft.item() == pytest.approx(sum(math.log1p(math.exp(g)) for g in GAPS) / 5, abs=1e-5)


def test_hinge_is_inactive_for_easy_anchors():
    # anchor (0, 0): positive at 1, negative at 10 -> gap -9, +0.3 stays negative: contributes 0.
    # anchor (0, 1): positive at 1, negative at 10.05 -> 0 as well; the two far points mirror them.
    points = torch.tensor([[0.0, 0.0], [0.0, 1.0], [10.0, 0.0], [10.0, 1.0]])
    assert batch_hard_triplet_loss(points, torch.tensor([0, 0, 1, 1]), 0.3).item() == 0.0


def test_margin_zero_and_separated_clusters_give_zero_loss():
    generator = torch.Generator().manual_seed(0)
    cluster_a = torch.randn(4, 8, generator=generator) * 0.1
    cluster_b = torch.randn(4, 8, generator=generator) * 0.1 + 10.0
    features = torch.cat([cluster_a, cluster_b])
    pids = torch.tensor([0] * 4 + [1] * 4)
    for distance in ("euclidean", "cosine"):
        features_for = features if distance == "euclidean" else features - features.mean(dim=0)
        assert batch_hard_triplet_loss(features_for, pids, 0.0, distance=distance).item() == 0.0


def test_matches_a_loop_reference_on_random_features():
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(12, 5, generator=generator)
    pids = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    def d(a: int, b: int, distance: str) -> float:
        if distance == "euclidean":
            return (features[a] - features[b]).norm().item()
        return 1 - F.cosine_similarity(features[a], features[b], dim=0).item()

    for distance in ("euclidean", "cosine"):
        terms = []
        for a in range(12):
            d_ap = max(d(a, p, distance) for p in range(12) if pids[p] == pids[a] and p != a)
            d_an = min(d(a, n, distance) for n in range(12) if pids[n] != pids[a])
            terms.append(max(d_ap - d_an + 0.5, 0.0))
        loss = batch_hard_triplet_loss(features, pids, 0.5, distance=distance)
        assert loss.item() == pytest.approx(sum(terms) / 12, abs=1e-5)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_gradient_is_finite_when_features_coincide(distance):
    # sample 1 repeats sample 0 (anchor-positive distance 0) and sample 2 repeats sample 3 across ids
    features = torch.tensor([[1.0, 2.0], [1.0, 2.0], [3.0, 1.0], [3.0, 1.0]], requires_grad=True)
    loss = batch_hard_triplet_loss(features, torch.tensor([0, 0, 0, 1]), 0.3, distance=distance)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(features.grad).all()


def test_all_features_identical_still_has_finite_gradient():
    features = torch.ones(4, 3, requires_grad=True)
    loss = batch_hard_triplet_loss(features, torch.tensor([0, 0, 1, 1]), 0.3)
    loss.backward()
    assert loss.item() == pytest.approx(0.3, abs=1e-5)
    assert torch.isfinite(features.grad).all()


def test_invalid_triplet_inputs_raise():
    with pytest.raises(ValueError, match=r"\(4, 2\).*\(3,\)"):
        batch_hard_triplet_loss(torch.zeros(4, 2), torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match=r"\(4,\)"):
        hardest_pairs(torch.zeros(4), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="no anchor"):
        batch_hard_triplet_loss(torch.randn(3, 2), torch.tensor([0, 1, 2]))  # no positives
    with pytest.raises(ValueError, match="no anchor"):
        batch_hard_triplet_loss(torch.randn(3, 2), torch.tensor([5, 5, 5]))  # no negatives
    with pytest.raises(ValueError, match="unknown distance 'manhattan'"):
        batch_hard_triplet_loss(POINTS, PIDS, distance="manhattan")
    with pytest.raises(ValueError, match="margin"):
        batch_hard_triplet_loss(POINTS, PIDS, -0.1)
    with pytest.raises(ValueError, match="integer"):
        batch_hard_triplet_loss(POINTS, PIDS.float())


# --- ReIDLoss on the zoo model ------------------------------------------------------------------

# 2 identities x 2 images of 3x64x32: stage 4 runs at 4x2, enough for 2 PCB stripes.
_PIDS = torch.tensor([0, 0, 1, 1])


def _images() -> torch.Tensor:
    return torch.randn(4, 3, 64, 32, generator=torch.Generator().manual_seed(0))


def test_reid_loss_on_bnneck_output_is_ce_plus_triplet_and_backpropagates():
    model = create_model("reid_resnet50", num_ids=4, width=8).train()
    output = model(_images())
    logits, features = output
    criterion = ReIDLoss()
    loss = criterion(output, _PIDS)
    expected_id = F.cross_entropy(logits, _PIDS, label_smoothing=0.1)
    expected_triplet = batch_hard_triplet_loss(features, _PIDS, 0.3)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert loss.item() == pytest.approx((expected_id + expected_triplet).item(), rel=1e-5)
    parts = criterion.last.to_dict()
    assert parts == pytest.approx({"total": loss.item(), "id": expected_id.item(), "triplet": expected_triplet.item()})
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.classifier.weight.grad.abs().sum() > 0


def test_reid_loss_weights():
    logits = torch.randn(4, 4, generator=torch.Generator().manual_seed(2))
    features = torch.randn(4, 6, generator=torch.Generator().manual_seed(3))
    id_only = ReIDLoss(triplet_weight=0.0)((logits, features), _PIDS)
    weighted = ReIDLoss(id_weight=0.5, triplet_weight=2.0, margin=0.1)((logits, features), _PIDS)
    expected_id = F.cross_entropy(logits, _PIDS, label_smoothing=0.1)
    assert id_only.item() == pytest.approx(expected_id.item(), rel=1e-6)
    triplet = batch_hard_triplet_loss(features, _PIDS, 0.1)
    assert weighted.item() == pytest.approx((0.5 * expected_id + 2.0 * triplet).item(), rel=1e-6)


def test_reid_loss_on_pcb_output_averages_the_part_ces():
    model = create_model("reid_resnet50", num_ids=4, width=8, pcb_parts=2).train()
    output = model(_images())
    part_logits, features = output
    assert isinstance(part_logits, list) and len(part_logits) == 2
    criterion = ReIDLoss(triplet_weight=0.0)  # PCB trains with the ID loss only
    loss = criterion(output, _PIDS)
    part_ces = [F.cross_entropy(logits, _PIDS, label_smoothing=0.1) for logits in part_logits]
    assert loss.item() == pytest.approx(((part_ces[0] + part_ces[1]) / 2).item(), rel=1e-6)
    assert math.isnan(criterion.last.to_dict()["triplet"])  # not computed
    loss.backward()
    assert all(torch.isfinite(c.weight.grad).all() for c in model.part_classifiers)
    with_triplet = ReIDLoss(triplet_weight=1.0)(output, _PIDS)
    expected = (part_ces[0] + part_ces[1]) / 2 + batch_hard_triplet_loss(features, _PIDS, 0.3)
    assert with_triplet.item() == pytest.approx(expected.item(), rel=1e-6)


def test_label_smoothing_is_honoured():
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.1, 3.0, 0.2, -0.5]])
    pids = torch.tensor([0, 1])
    features = torch.zeros(2, 3)
    for smoothing in (0.0, 0.1, 0.3):
        loss = ReIDLoss(triplet_weight=0.0, label_smoothing=smoothing)((logits, features), pids)
        torch_ce = nn.CrossEntropyLoss(label_smoothing=smoothing)(logits, pids)
        assert loss.item() == pytest.approx(torch_ce.item(), rel=1e-6)
    smoothed = ReIDLoss(triplet_weight=0.0, label_smoothing=0.3)((logits, features), pids)
    plain = ReIDLoss(triplet_weight=0.0, label_smoothing=0.0)((logits, features), pids)
    assert smoothed.item() != pytest.approx(plain.item())


def test_classification_loss_is_torch_cross_entropy():
    criterion = classification_loss(label_smoothing=0.2)
    assert isinstance(criterion, nn.CrossEntropyLoss) and criterion.label_smoothing == 0.2
    assert classification_loss().label_smoothing == 0.0
    with pytest.raises(ValueError, match="1.5"):
        classification_loss(1.5)


def test_reid_loss_rejects_bad_outputs():
    criterion = ReIDLoss()
    with pytest.raises(ValueError, match=r"eval mode.*|tensor \(4, 8\)"):
        criterion(torch.zeros(4, 8), _PIDS)  # an eval-mode feature, not (logits, features)
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        criterion((torch.zeros(3, 4), torch.zeros(4, 8)), _PIDS)  # logits batch 3 vs 4 pids
    with pytest.raises(ValueError, match=r"\(4, 8\).*\(3,\)"):
        criterion((torch.zeros(4, 4), torch.zeros(4, 8)), _PIDS[:3])
    with pytest.raises(ValueError, match=r"\[0, 4\).*\[0, 7\]"):
        criterion((torch.zeros(4, 4), torch.zeros(4, 8)), torch.tensor([0, 0, 7, 7]))
    with pytest.raises(ValueError, match="disagree"):
        criterion(([torch.zeros(4, 4), torch.zeros(4, 5)], torch.zeros(4, 8)), _PIDS)
    for kwargs in ({"id_weight": -1.0}, {"id_weight": 0.0, "triplet_weight": 0.0}, {"margin": -1.0},
                   {"label_smoothing": 1.0}):
        with pytest.raises(ValueError):
            ReIDLoss(**kwargs)
