"""round_to="auto": the alignment chosen for the deployment target, applied per group, recorded."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

import compressor as C
import compressor.pruning
import benchmarks._alignment as probe
import compressor.app._alignment as _align
import compressor.pruning._align as core_align
from compressor.pruning._select import TargetToleranceWarning
from models import create_model


def fake_probe(kinds: dict[str, int], calls: list | None = None):
    def fake(runtime, *, device="cpu", batch_size=1, threads=None, isa="", refresh=False, **kw):
        if calls is not None:
            calls.append((runtime, device, batch_size, threads))
        found = {k: probe.KindProbe(k, v, {}, {}) for k, v in kinds.items()}
        return probe.ProbeResult(runtime, device, batch_size, threads, "key", found, 0.0)
    return fake


@pytest.fixture(autouse=True)
def _fresh_memo():
    """Resolved alignments are remembered per process: a faked probe must not outlive its test."""
    _align._RESOLVED.clear()
    yield
    _align._RESOLVED.clear()


@pytest.fixture
def probed(monkeypatch):
    """Every runtime's probe answers conv 16, depthwise 8, linear 1."""
    calls: list = []
    monkeypatch.setattr(_align, "probe_alignment", fake_probe({"conv": 16, "depthwise": 8, "linear": 1}, calls))
    return calls


def widths_of(model: nn.Module) -> dict[str, tuple[int, int, int]]:
    return {n: (m.in_channels, m.out_channels, m.groups) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def test_auto_is_the_default_and_explicit_round_to_wins(probed):
    assert C.PruneConfig(ratio=0.3).round_to == "auto"
    explicit = _align.resolve_alignment(C.PruneConfig(ratio=0.3, round_to=4))
    assert explicit.alignment == {} and not probed
    auto = _align.resolve_alignment(C.PruneConfig(ratio=0.3, runtime="onnxruntime", batch_size=8, threads=2))
    assert auto.alignment["kinds"] == {"conv": 16, "depthwise": 8, "linear": 1}
    assert auto.alignment["runtimes"]["onnxruntime"]["source"] == "probe"
    assert probed == [("onnxruntime", "cpu", 8, 2)]
    assert C.PruneConfig.from_dict(auto.to_dict()) == auto  # the recipe round-trips


def test_default_target_is_every_cpu_runtime_here(probed):
    config = _align.resolve_alignment(C.PruneConfig(ratio=0.3))
    assert set(config.alignment["runtimes"]) == set(_align.default_runtimes())
    assert {c[0] for c in probed} == set(_align.default_runtimes())


def test_unprobeable_target_falls_back_to_the_isa_table(monkeypatch):
    def refuse(*a, **k):
        raise probe.ProbeError("cannot probe: not installed")
    monkeypatch.setattr(_align, "probe_alignment", refuse)
    config = _align.resolve_alignment(C.PruneConfig(ratio=0.3, runtime="openvino"))
    expected = core_align.ISA_TABLE[_align.cpu_isa()]
    assert config.alignment["kinds"] == {k: expected for k in _align.KINDS}
    assert config.alignment["runtimes"]["openvino"]["source"] == "isa-table"
    assert "not installed" in config.alignment["runtimes"]["openvino"]["note"]
    gpu = _align.resolve_alignment(C.PruneConfig(ratio=0.3, runtime="tensorrt", device="cuda"))
    assert gpu.alignment["kinds"]["conv"] == core_align.ISA_TABLE["gpu"] == 8


def test_isa_table_is_documented():
    assert core_align.ISA_TABLE["avx512"] == 16 and core_align.ISA_TABLE["avx2"] == 8 and core_align.ISA_TABLE["gpu"] == 8
    assert _align.cpu_isa() in ("avx512", "avx2", "sse", "neon", "unknown")


def test_groups_take_their_kinds_alignment_capped_by_width(probed):
    model = create_model("torchvision:mobilenet_v2").eval()
    x = torch.randn(1, 3, 64, 64)
    config = _align.resolve_alignment(C.PruneConfig(target_flops=0.5, runtime="onnxruntime"))
    graph = C.build_dependency_graph(model, x)
    align = core_align.group_alignment(graph, config)
    for g in graph.groups:
        kinds = {core_align.member_kind(graph, m) for m in g.members} - {None}
        wanted = max({"conv": 16, "depthwise": 8, "linear": 1}[k] for k in kinds) if kinds else 1
        cap = 1 << (len(g.atoms).bit_length() - 1)
        assert align[g.index] == min(wanted, cap), g.describe(graph)
    # an expanded group feeds a depthwise conv and is produced by a dense one: the larger alignment wins
    mixed = [g for g in graph.groups if {core_align.member_kind(graph, m) for m in g.members} >= {"conv", "depthwise"}]
    assert mixed and all(align[g.index] == 16 for g in mixed)

    pruned = compressor.pruning.prune_model(model, x, config).model
    for name, (cin, cout, groups) in widths_of(pruned).items():
        if groups > 1:
            assert cin == cout == groups, name  # depthwise convs follow the channels they are coupled to
    kept = {g.index: None for g in graph.groups}
    result = compressor.pruning.prune_model(model, x, config)
    counts = graph.kept_counts(result.removed)
    for g in graph.groups:
        member = g.members[0]
        if len(g.removable) and counts[member] < graph.members[member].size:
            assert counts[member] % align[g.index] == 0, g.describe(graph)
    assert kept


def test_auto_alignment_is_recorded_in_recipe_and_manifest(probed, tmp_path):
    from runtimes import load_bundle

    model = create_model("resnet20").eval()
    x = torch.randn(1, 3, 32, 32)
    pruned = C.prune(model, x, criterion="l2", target_flops=0.6, runtime="onnxruntime").model
    entry = pruned.compressor_metadata["history"][-1]
    assert entry["config"]["round_to"] == "auto"
    assert entry["config"]["alignment"]["kinds"] == {"conv": 16, "depthwise": 8, "linear": 1}
    C.save_model(pruned, tmp_path / "m")
    again = C.load_model(tmp_path / "m")
    assert again.compressor_metadata["history"][-1]["config"]["alignment"]["kinds"]["conv"] == 16
    from compressor.app._bundle import export_bundle
    from runtimes._bundle import BundleConfig

    export_bundle(again, tmp_path / "b", (3, 32, 32), BundleConfig(targets=("onnx",), batch_sizes=(1,)))
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["alignment"]["round_to"] == "auto"
    assert manifest["alignment"]["auto"]["kinds"]["conv"] == 16
    assert load_bundle(tmp_path / "b").manifest["alignment"]["auto"]["runtimes"]["onnxruntime"]["source"] == "probe"

    explicit = C.prune(model, x, "l2", target_flops=0.6, round_to=4).model
    assert explicit.compressor_metadata["history"][-1]["config"]["round_to"] == 4
    assert all(out % 4 == 0 for _, out, _ in widths_of(explicit).values() if out != 10)


class SmallNet(nn.Module):
    """A custom net with small layers, where alignment steps are coarse."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 24, 3, padding=1), nn.Conv2d(24, 40, 3, padding=1), nn.Conv2d(40, 32, 3)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.c3(torch.relu(self.c2(torch.relu(self.c1(x))))))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("round_to", [8, 16, "auto"])
def test_cost_target_lands_within_tolerance_or_names_the_nearest(round_to, probed):
    model, x = SmallNet().eval(), torch.randn(1, 3, 16, 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = compressor.pruning.prune_model(model, x, C.PruneConfig(target_flops=0.5, round_to=round_to, runtime="onnxruntime"))
    reached = result.report.flops_ratio
    notes = [w for w in caught if issubclass(w.category, TargetToleranceWarning)]
    if abs(reached - 0.5) <= 0.02:
        assert not notes
    else:  # never silently far off: the warning names both reachable values and the one chosen
        assert notes, f"landed on {reached:.3f} without a word"
        text = str(notes[0].message)
        assert f"landed on {reached:.3f}" in text and "nearest reachable values" in text
    assert abs(reached - 0.5) < 0.25  # not 27% for a 50% target


def test_unaligned_budget_semantics_unchanged():
    model, x = SmallNet().eval(), torch.randn(1, 3, 16, 16)
    result = compressor.pruning.prune_model(model, x, C.PruneConfig(target_flops=0.5, round_to=1))
    assert result.report.flops_ratio <= 0.5
