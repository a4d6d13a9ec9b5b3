"""Market-1501 CMC/mAP, distances and top-k accuracy on examples small enough to compute by hand."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from compressor.training._metrics import (
    ReIDResult,
    evaluate_reid,
    pairwise_distance,
    topk_accuracy,
)

# Gallery: 8 items (index: pid, camera).
#   g0: pid 1, cam 0     g1: pid -1 (junk), cam 1   g2: pid 0 (distractor), cam 1   g3: pid 1, cam 1
#   g4: pid 2, cam 1     g5: pid 1, cam 2           g6: pid 2, cam 0                g7: pid 3, cam 2
GALLERY_PIDS = np.array([1, -1, 0, 1, 2, 1, 2, 3])
GALLERY_CAMS = np.array([0, 1, 1, 1, 1, 2, 0, 2])
QUERY_PIDS = np.array([1, 2, 3, 1])
QUERY_CAMS = np.array([0, 1, 2, 2])
DISTMAT = np.array(
    [
        # g0    g1    g2    g3    g4    g5    g6    g7
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],  # q0 pid 1 cam 0
        [0.9, 0.8, 0.7, 0.6, 0.1, 0.5, 0.2, 0.3],  # q1 pid 2 cam 1
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.0],  # q2 pid 3 cam 2
        [0.9, 0.05, 0.1, 0.85, 0.2, 0.0, 0.3, 0.4],  # q3 pid 1 cam 2
    ]
)
# q0: g0 (same pid, same cam) and g1 (junk) are removed; ranking g2 x, g3 v, g4 x, g5 v, g6 x, g7 x.
#     first match at rank 2; AP = (1/2 + 2/4) / 2 = 0.5
# q1: g4 (same pid, same cam) and g1 (junk) are removed; ranking g6 v, g7 x, g5 x, g3 x, g2 x, g0 x.
#     first match at rank 1; AP = (1/1) / 1 = 1.0
# q2: its only pid-3 item g7 shares its camera -> no valid match -> skipped.
# q3: g5 (same pid, same cam) and g1 (junk) are removed; ranking g2 x (distractor), g4 x, g6 x, g7 x,
#     g3 v, g0 v. first match at rank 5; AP = (1/5 + 2/6) / 2 = 0.2666...
EXPECTED_AP = [0.5, 1.0, math.nan, (1 / 5 + 2 / 6) / 2]
# CMC over the 3 valid queries (first matches at ranks 2, 1, 5):
#   rank 1: q1 -> 1/3;  ranks 2-4: q0, q1 -> 2/3;  ranks 5-10: all three -> 1
EXPECTED_CMC = [1 / 3, 2 / 3, 2 / 3, 2 / 3, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
EXPECTED_MAP = (0.5 + 1.0 + (1 / 5 + 2 / 6) / 2) / 3  # = 0.58888...


def _evaluate(**kwargs) -> ReIDResult:
    return evaluate_reid(DISTMAT, QUERY_PIDS, GALLERY_PIDS, QUERY_CAMS, GALLERY_CAMS, **kwargs)


def test_market1501_protocol_on_hand_example():
    result = _evaluate()
    assert result.num_queries == 4
    assert result.num_valid_queries == 3  # q2 skipped
    assert result.cmc == pytest.approx(EXPECTED_CMC)
    assert result.rank1 == pytest.approx(1 / 3)
    assert result.rank5 == pytest.approx(1.0)
    assert result.rank10 == pytest.approx(1.0)
    assert result.mAP == pytest.approx(EXPECTED_MAP)
    np.testing.assert_allclose(result.ap_per_query, EXPECTED_AP)  # NaN where skipped


def test_result_to_dict_is_json_ready():
    result = _evaluate(max_rank=12)
    assert len(result.cmc) == 12
    as_dict = result.to_dict()
    assert as_dict["ap_per_query"][2] is None  # the skipped query
    assert json.loads(json.dumps(as_dict, allow_nan=False))["mAP"] == pytest.approx(EXPECTED_MAP)
    with pytest.raises(AttributeError):
        result.mAP = 1.0  # frozen


def test_same_pid_other_camera_and_distractor_are_not_removed():
    # Without the protocol's removal q0 would score rank 1 on g0; the distractor g2 stays a wrong match:
    # dropping it would move q0's first match (g3) from rank 2 to rank 1.
    result = evaluate_reid(DISTMAT[:1], QUERY_PIDS[:1], GALLERY_PIDS, QUERY_CAMS[:1], GALLERY_CAMS)
    assert result.rank1 == 0.0 and result.cmc[1] == 1.0
    assert result.mAP == pytest.approx(0.5)


def test_query_without_valid_match_is_skipped_and_all_skipped_raises():
    result = evaluate_reid(DISTMAT[1:3], QUERY_PIDS[1:3], GALLERY_PIDS, QUERY_CAMS[1:3], GALLERY_CAMS)
    assert (result.num_queries, result.num_valid_queries) == (2, 1)
    assert result.mAP == pytest.approx(1.0)  # q1 only
    with pytest.raises(ValueError, match="none of the 1 queries"):
        evaluate_reid(DISTMAT[2:3], QUERY_PIDS[2:3], GALLERY_PIDS, QUERY_CAMS[2:3], GALLERY_CAMS)


def test_ties_keep_gallery_order():
    # both gallery items at the same distance: the stable sort ranks the lower gallery index first
    pids, cams = np.array([5, 7]), np.array([1, 1])
    wrong_first = evaluate_reid(np.array([[0.5, 0.5]]), np.array([7]), pids, np.array([0]), cams)
    assert wrong_first.rank1 == 0.0 and wrong_first.mAP == pytest.approx(1 / 2)
    right_first = evaluate_reid(np.array([[0.5, 0.5]]), np.array([5]), pids, np.array([0]), cams)
    assert right_first.rank1 == 1.0 and right_first.mAP == pytest.approx(1.0)


def test_ap_matches_sklearn_on_random_rankings():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    num_query, num_gallery = 6, 40
    gallery_pids = rng.integers(1, 5, num_gallery)
    gallery_cams = rng.integers(0, 3, num_gallery)
    query_pids = rng.integers(1, 5, num_query)
    query_cams = rng.integers(0, 3, num_query)
    distmat = rng.random((num_query, num_gallery))  # continuous: no ties
    result = evaluate_reid(distmat, query_pids, gallery_pids, query_cams, gallery_cams)
    for q in range(num_query):
        keep = ~((gallery_pids == query_pids[q]) & (gallery_cams == query_cams[q]))
        truth = gallery_pids[keep] == query_pids[q]
        if not truth.any():
            assert math.isnan(result.ap_per_query[q])
            continue
        expected = sklearn_metrics.average_precision_score(truth, -distmat[q][keep])
        assert result.ap_per_query[q] == pytest.approx(expected)


def test_evaluate_reid_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"query_pids must have shape \(4,\).*\(4, 8\).*\(3,\)"):
        evaluate_reid(DISTMAT, QUERY_PIDS[:3], GALLERY_PIDS, QUERY_CAMS, GALLERY_CAMS)
    with pytest.raises(ValueError, match=r"gallery_camids must have shape \(8,\).*\(7,\)"):
        evaluate_reid(DISTMAT, QUERY_PIDS, GALLERY_PIDS, QUERY_CAMS, GALLERY_CAMS[:7])
    with pytest.raises(ValueError, match=r"distmat must be 2-D.*\(8,\)"):
        evaluate_reid(DISTMAT[0], QUERY_PIDS, GALLERY_PIDS, QUERY_CAMS, GALLERY_CAMS)
    with pytest.raises(ValueError, match="empty"):
        evaluate_reid(np.zeros((0, 8)), QUERY_PIDS[:0], GALLERY_PIDS, QUERY_CAMS[:0], GALLERY_CAMS)
    with pytest.raises(ValueError, match="max_rank"):
        _evaluate(max_rank=5)
    with pytest.raises(ValueError, match="NaN"):
        evaluate_reid(np.full((4, 8), np.nan), QUERY_PIDS, GALLERY_PIDS, QUERY_CAMS, GALLERY_CAMS)


def test_euclidean_and_cosine_distance_on_hand_vectors():
    query = np.array([[3.0, 4.0]])
    gallery = np.array([[3.0, 4.0], [6.0, 8.0], [4.0, -3.0], [-3.0, -4.0]])
    # Euclidean: |(0,0)| = 0, |(3,4)| = 5, |(1,-7)| = sqrt(50), |(-6,-8)| = 10
    np.testing.assert_allclose(pairwise_distance(query, gallery), [[0.0, 5.0, math.sqrt(50), 10.0]], atol=1e-5)
    # cosine: same direction 0 (scale ignored), orthogonal 1, opposite 2
    cosine = pairwise_distance(torch.tensor(query), torch.tensor(gallery), metric="cosine")
    np.testing.assert_allclose(cosine, [[0.0, 0.0, 1.0, 2.0]], atol=1e-6)
    assert cosine.dtype == np.float64 and cosine.shape == (1, 4)
    assert pairwise_distance(query.astype(np.float32), gallery.astype(np.float32)).dtype == np.float32


def test_pairwise_distance_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 2\)"):
        pairwise_distance(np.zeros((2, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="empty"):
        pairwise_distance(np.zeros((0, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"2-D.*\(3,\)"):
        pairwise_distance(np.zeros(3), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="unknown metric 'l1'"):
        pairwise_distance(np.zeros((2, 3)), np.zeros((4, 3)), metric="l1")


def test_topk_accuracy_on_hand_example():
    logits = torch.tensor(
        [
            [0.1, 0.7, 0.2],  # target 1: top-1 hit
            [0.5, 0.3, 0.2],  # target 1: ranked 2nd -> top-2 hit
            [0.2, 0.3, 0.5],  # target 0: ranked 3rd -> only top-3 hit
            [0.6, 0.1, 0.3],  # target 0: top-1 hit
        ]
    )
    targets = torch.tensor([1, 1, 0, 0])
    # top-1: 2/4; top-2: 3/4; top-5 is clipped to the 3 classes: 4/4
    assert topk_accuracy(logits, targets, ks=(1, 2, 5)) == {1: 0.5, 2: 0.75, 5: 1.0}
    assert topk_accuracy(logits.numpy(), targets.numpy(), ks=(1,)) == {1: 0.5}


def test_topk_accuracy_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"\(4,\)"):
        topk_accuracy(torch.zeros(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(4,\).*\(3,\)"):
        topk_accuracy(torch.zeros(4, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="k >= 1"):
        topk_accuracy(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), ks=(0,))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        topk_accuracy(torch.zeros(4, 3), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="non-empty"):
        topk_accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
