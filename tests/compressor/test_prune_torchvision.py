"""Coverage sweep over torchvision: every classification, segmentation and detection model.

Each model is built with random weights (nothing is downloaded), randomised so that every
channel matters, and pruned at ratio 0.3 with the ``random`` criterion and
``allow_renormalization=False``; the pruned model must equal the masked oracle, and run one
train-mode forward and backward pass (batch of two: train-mode BatchNorm). What the engine
must refuse or block is spelled out in ``EXPECTED_BLOCKS``: every other model is fully prunable
(only its outputs are protected, the train-mode ones too). The default run covers the
representative subset of ``benchmarks/coverage.py``; the rest is marked ``slow``.
"""
from __future__ import annotations

import copy
import fnmatch
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compressor as C
from benchmarks import coverage
from compressor.testing import check_pruned, count_params, prune_with_oracle, randomize_, run_eval, structure_problems

torchvision = pytest.importorskip("torchvision")
tvm = torchvision.models


# Channels blocked for a reason other than "model output (protected)", by model-name pattern;
# the strings are substrings of the engine's block reasons. Patterns not listed: none allowed.
EXPECTED_BLOCKS: dict[str, set[str]] = {
    "convnext_*": {"normalised by a LayerNorm over channels"},  # allow_renormalization=False
    "swin_*": {"unsupported op: node 'shifted_window_attention"},  # swin_v2_* too
    "swin_v2_*": {"hard-coded channel count in reshape"},  # heads of the position-bias MLP: view(-1, num_heads)
    "vit_*": {"hard-coded channel count in reshape"},  # patch embedding: x.reshape(n, hidden_dim, -1)
    # attention: hard-coded heads, and its output reshaped to the residual stream's width (read from its input)
    "maxvit_t": {"hard-coded channel count in reshape", "reshape of unprunable channels to a size read from prunable ones"},
}
# Models the engine refuses as a whole, and the error it must raise (message names the class).
REFUSED_WHOLE = {name: C.TraceError for name in tvm.list_models(module=tvm.detection)}
# Detection backbones: channels blocked besides the outputs.
EXPECTED_BACKBONE_BLOCKS: dict[str, set[str]] = {
    "ssd300_vgg16": {"unsupported op: node 'normalize'"},  # SSD's L2Norm scales conv4_3 by a norm over channels
}

PROTECTED = "model output (protected)"
FAST = set(coverage.FAST_CLASSIFICATION) | set(coverage.FAST_SEGMENTATION) | set(coverage.FAST_DETECTION)
# Under 2 GMACs per image: parity is also checked on a batch of two (the others: on the traced image)
BATCH_OF_TWO = {"resnet18", "mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x0_5", "squeezenet1_1",
                "efficientnet_b0", "regnet_x_400mf", "regnet_y_400mf", "mnasnet0_5", "googlenet",
                "lraspp_mobilenet_v3_large"}


def expected_blocks(name: str, table: dict[str, set[str]]) -> set[str]:
    return set().union(*(v for pattern, v in table.items() if fnmatch.fnmatch(name, pattern)))


def assert_blocks(graph: C.DependencyGraph, expected: set[str]) -> None:
    """Every block reason but the protected output is an expected one, and each expected one occurs."""
    reasons = [r for r in graph.unsupported if r != PROTECTED]
    unexpected = [r for r in reasons if not any(e in r for e in expected)]
    assert not unexpected, f"unexpectedly blocked: {unexpected}"
    missing = [e for e in expected if not any(e in r for r in reasons)]
    assert not missing, f"expected blocks did not occur: {missing} (blocked: {reasons})"


def params(names: list[str]) -> list:
    return [pytest.param(n, marks=() if n in FAST else pytest.mark.slow, id=n) for n in names]


def random_config(allow_renormalization: bool = False) -> C.PruneConfig:
    return C.PruneConfig(criterion="random", ratio=0.3, seed=1, allow_renormalization=allow_renormalization)


def build(name: str, **kwargs) -> nn.Module:
    """The model as ``benchmarks/coverage.py`` builds it: random weights under which every channel matters."""
    return coverage.build_model(name, **kwargs)


def images(batch: int, size: tuple[int, int, int]) -> torch.Tensor:
    return torch.randn(batch, *size, generator=torch.Generator().manual_seed(batch))


TRAIN_SIDE = 64  # the train step checks that shapes fit and gradients are finite: any size the model takes


def assert_trains(model: nn.Module, size: tuple[int, int, int]) -> None:
    """One train-mode forward and backward pass on a batch of two runs, with finite gradients: at
    64x64 when the model takes that size (most CNNs; it keeps the 100-model sweep affordable), else at
    the test's own size (ViT, Swin, MaxViT; Inception-v3's auxiliary head needs 299x299)."""
    if size[1] > TRAIN_SIDE and not coverage.train_step_problem(model, images(2, (size[0], TRAIN_SIDE, TRAIN_SIDE))):
        return
    problem = coverage.train_step_problem(model, images(2, size))
    assert not problem, f"the pruned model does not train: {problem}"


# ---- classification ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", params(tvm.list_models(module=tvm)))
def test_classification_model_matches_masked_oracle(name):
    model = build(name)
    size = coverage.input_size(name)
    x = images(1, size)  # traced on one image; the cheap ones are checked on a batch of two
    p = prune_with_oracle(model, x, random_config())
    check_pruned(p, images(2, size) if name in BATCH_OF_TWO else x)
    assert_blocks(p.graph, expected_blocks(name, EXPECTED_BLOCKS))
    assert_trains(p.pruned, size)  # GoogLeNet's and Inception-v3's auxiliary heads run here


# ---- segmentation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", params(tvm.list_models(module=tvm.segmentation)))
def test_segmentation_model_matches_masked_oracle(name):
    model = build(name)
    x = images(1, coverage.SEGMENTATION_SIZE)
    p = prune_with_oracle(model, x, random_config())
    check_pruned(p, images(2, coverage.SEGMENTATION_SIZE) if name in BATCH_OF_TWO else x)
    out = run_eval(p.pruned, x)
    assert list(out) == ["out"] and out["out"].shape == (1, 21, *coverage.SEGMENTATION_SIZE[1:])
    assert_blocks(p.graph, set())
    assert_trains(p.pruned, coverage.SEGMENTATION_SIZE)


# ---- detection: the whole model is refused, its backbone is pruned ----------------------------------------


@pytest.mark.parametrize("name", params(tvm.list_models(module=tvm.detection)))
def test_detection_backbone_matches_masked_oracle_and_detector_still_runs(name):
    kwargs = {} if name.startswith("ssd") else coverage.SMALL_DETECTOR_KWARGS
    model = build(name, **kwargs)
    x = images(1, coverage.DETECTION_SIZE)
    with pytest.raises(REFUSED_WHOLE[name], match=type(model).__name__):
        C.build_dependency_graph(model, ([x[0]],))

    p = prune_with_oracle(model.backbone, x, random_config())
    check_pruned(p, x)
    assert_blocks(p.graph, expected_blocks(name, EXPECTED_BACKBONE_BLOCKS))
    assert_trains(p.pruned, coverage.DETECTION_SIZE)

    detector = copy.deepcopy(model)
    detector.backbone = p.pruned
    batch = [torch.rand(*coverage.DETECTION_SIZE), torch.rand(3, 256, 300)]
    want = run_eval(model, batch)
    assert len(want) == 2
    assert structure_problems(run_eval(detector, batch), want, "detections") == []  # keys, dtypes, box dims


# ---- LayerNorm over channels (allow_renormalization=True) -------------------------------------------------


def test_convnext_with_renormalization_prunes_the_layernorm_channels():
    model, x = build("convnext_tiny"), images(1, (3, 224, 224))
    strict = C.pruning.prune_model(model, x, random_config())
    renorm = C.pruning.prune_model(model, x, random_config(allow_renormalization=True))
    assert renorm.graph.removable.size > strict.graph.removable.size
    assert not any("LayerNorm" in r for r in renorm.graph.unsupported)
    assert count_params(renorm.model) < count_params(strict.model) < count_params(model)
    stem = renorm.model.features[0][0]
    assert stem.out_channels < 96 and renorm.model.features[0][1].normalized_shape == (stem.out_channels,)
    out, full = run_eval(renorm.model, x), run_eval(model, x)
    assert out.shape == full.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, full, rtol=1e-3, atol=1e-3), "pruning changed nothing"


class ChannelsLastLayerNorm(nn.Module):
    """conv -> permute -> LayerNorm(C) -> permute -> conv, as in ConvNeXt's LayerNorm2d."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)

    def forward(self, x):
        x = self.norm(self.conv1(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.conv2(x)


def test_layernorm_over_kept_channels_equals_a_hand_computed_reference():
    model, x = randomize_(ChannelsLastLayerNorm().eval()), torch.randn(2, 3, 6, 6)
    strict = C.build_dependency_graph(model, x, allow_renormalization=False)
    assert strict.removable.size == 0 and any("LayerNorm" in r for r in strict.unsupported)

    result = C.pruning.prune_model(model, x, C.PruneConfig(criterion="random", ratio=0.5, seed=2, round_to=1))
    m = next(i for i, mem in enumerate(result.graph.members) if mem.module == "conv1" and mem.kind == "conv_out")
    kept = torch.from_numpy(result.graph.kept_mask(m, result.removed).nonzero()[0])
    assert kept.numel() == 4
    with torch.no_grad():
        y = model.conv1(x)[:, kept].permute(0, 2, 3, 1)
        y = F.layer_norm(y, (kept.numel(),), model.norm.weight[kept], model.norm.bias[kept], model.norm.eps)
        reference = F.conv2d(y.permute(0, 3, 1, 2), model.conv2.weight[:, kept], model.conv2.bias, padding=1)
        got = result.model(x)
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
    zeroed = copy.deepcopy(model)
    C.pruning.zero_channels_(zeroed, result.graph, result.removed)
    with torch.no_grad():  # renormalising is not zeroing: the statistics see fewer channels
        assert not torch.allclose(got, zeroed(x), rtol=1e-3, atol=1e-3)


class HardCodedHeads(nn.Module):
    """MaxViT's attention pattern: a residual stream normalised by a LayerNorm, attention heads of a
    literal count and width, and the attention output reshaped to the width read from its input."""

    heads, head_dim = 2, 4

    def __init__(self, width: int = 8):
        super().__init__()
        self.stem = nn.Linear(3, width)
        self.norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * self.heads * self.head_dim)
        self.merge = nn.Linear(self.heads * self.head_dim, width)
        self.head = nn.Linear(width, 5)

    def forward(self, x):
        x = self.stem(x)
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        out = torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v
        out = out.transpose(1, 2).reshape(b, n, d)  # d: the stream's width, read from the input
        return self.head(x + self.merge(out))


def test_a_reshape_to_a_width_read_from_the_stream_blocks_the_stream_before_surgery():
    """With renormalisation allowed, MaxViT-T's residual stream looked prunable and the pruned model
    failed at this reshape; the graph now blocks it, naming the reshape."""
    model, x = HardCodedHeads().eval(), torch.randn(1, 6, 3)
    g = C.build_dependency_graph(model, x)
    stream = next(i for i, m in enumerate(g.members) if m.module == "stem" and m.kind == "linear_out")
    assert g.blocked[g.member_atoms(stream)].all()
    assert {g.block_reason[int(a)] for a in g.member_atoms(stream)} == {
        "reshape of unprunable channels to a size read from prunable ones at node 'reshape_3' (reshape)"}
    with pytest.raises(C.UnprunableModelError, match="reshape of unprunable channels"):
        C.pruning.prune_model(model, x, random_config(allow_renormalization=True))


def test_maxvit_with_renormalization_prunes_what_its_attention_allows():
    model, x = build("maxvit_t"), images(1, (3, 224, 224))
    result = C.pruning.prune_model(model, x, random_config(allow_renormalization=True))
    assert any("reshape of unprunable channels to a size read from prunable ones" in r for r in result.graph.unsupported)
    assert count_params(result.model) < count_params(model)
    out = run_eval(result.model, x)
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


# ---- the coverage report ----------------------------------------------------------------------------


def test_coverage_script_reports_a_row_per_model(tmp_path, capsys):
    out = tmp_path / "coverage.json"
    assert coverage.main(["--models", "squeezenet1_1", "lraspp_mobilenet_v3_large", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| squeezenet1_1 | classification | pruned, parity OK, trains |" in table
    assert "| lraspp_mobilenet_v3_large | segmentation | pruned, parity OK, trains |" in table
    data = json.loads(out.read_text())
    assert data["schema_version"] == 1 and data["ratio"] == 0.3
    rows = {r["model"]: r for r in data["rows"]}
    assert rows.keys() == {"squeezenet1_1", "lraspp_mobilenet_v3_large"}
    sq = rows["squeezenet1_1"]
    assert sq["status"] == "pruned" and sq["params_after"] < sq["params_before"]
    assert sq["parity_max_abs_err"] <= 1e-3 * sq["oracle_max_abs"]
    assert sq["blocked_channels_by_reason"] == {PROTECTED: 1000}
