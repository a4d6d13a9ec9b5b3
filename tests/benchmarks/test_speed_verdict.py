"""benchmarks._speed_verdict, and the speed warnings of ``compressor bench`` (terminal, summary.md, report.html).

The end-to-end cases benchmark three real bundles on onnxruntime: a baseline conv of 128 channels,
a candidate of 64 (half the FLOPs, genuinely about 2x faster) and a "slow" candidate of 64 that
also runs a chain of element-wise ops on an upsampled copy of its features. The FLOPs counter does
not count element-wise ops, so the slow one claims the same 2x but takes about 20x the baseline's
time. Timings are only compared with each other, never with an absolute time.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import jsonschema
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks._report import SPEED_WARNINGS, render_markdown, validate_results
from benchmarks._speed_verdict import EFFICIENCY_FLOOR, SpeedVerdict, row_verdict, speed_verdict, speed_warnings
from benchmarks._sweep import BenchBundle
from compressor.app._bundle import export_bundle
from compressor.app.cli import main as cli
from runtimes import get_runtime
from runtimes._bundle import BundleConfig

PROJECT = Path(__file__).resolve().parents[2]
FIX_UNALIGNED = "--round-to auto"

# ----------------------------------------------------------------------------- speed_verdict


def test_slower_candidate_blames_the_alignment_and_names_the_fix():
    v = speed_verdict(0.5, 2.0, ci=(0.45, 0.55), runtime="onnxruntime", batch_size=8)
    assert v.level == "slower" and not v.ok
    assert v.practical == 0.5 and v.theoretical == 2.0 and v.efficiency == pytest.approx(0.25)
    assert "0.50x [0.45, 0.55]" in v.message and "2.00x" in v.message and "25%" in v.message
    assert "on onnxruntime at batch 8" in v.message and "2x its baseline's time" in v.message
    assert FIX_UNALIGNED in v.message and "--round-to 16" in v.message


def test_median_below_one_is_slower_even_when_the_interval_reaches_one():
    v = speed_verdict(0.97, 2.0, ci=(0.9, 1.05))
    assert v.level == "slower" and "[0.90, 1.05]" in v.message


def test_aligned_candidate_points_at_overhead_and_batch_size():
    v = speed_verdict(0.8, 2.0, batch_size=1, alignment=16)
    assert v.level == "slower"
    assert "multiples of 16" in v.message and "at batch 1" in v.message and "larger batch size" in v.message
    assert "per op" in v.message and "--round-to" not in v.message


@pytest.mark.parametrize("alignment", [None, 1])
def test_unknown_or_unit_alignment_suggests_rounding(alignment):
    assert FIX_UNALIGNED in speed_verdict(1.2, 2.0, alignment=alignment).message


def test_faster_but_inefficient():
    v = speed_verdict(1.2, 2.0)
    assert v.level == "inefficient" and not v.ok and v.efficiency == pytest.approx(0.6)
    assert f"{EFFICIENCY_FLOOR:.0%}" in v.message and FIX_UNALIGNED in v.message


@pytest.mark.parametrize("practical, theoretical", [(1.8, 2.0), (1.6, 2.0), (8.0, 4.0)])
def test_efficient_speedup_is_ok(practical, theoretical):
    v = speed_verdict(practical, theoretical)
    assert v.level == "ok" and v.ok and "--round-to" not in v.message


@pytest.mark.parametrize("practical, theoretical", [(0.97, 1.0), (0.5, 1.03), (0.9, 0.7)])
def test_nothing_pruned_is_no_warning(practical, theoretical):
    v = speed_verdict(practical, theoretical)
    assert v.ok and "nothing was pruned" in v.message


def test_floor_is_a_parameter():
    assert speed_verdict(1.8, 2.0, floor=0.95).level == "inefficient"
    assert speed_verdict(1.2, 2.0, floor=0.5).ok


@pytest.mark.parametrize("kwargs, match", [
    ({"practical": 0.0, "theoretical": 2.0}, "practical"),
    ({"practical": math.nan, "theoretical": 2.0}, "practical"),
    ({"practical": 1.0, "theoretical": -1.0}, "theoretical"),
    ({"practical": 1.0, "theoretical": 2.0, "alignment": 0}, "alignment"),
    ({"practical": 1.0, "theoretical": 2.0, "ci": (1.0,)}, "ci"),
    ({"practical": 1.0, "theoretical": 2.0, "floor": 0.0}, "floor"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        speed_verdict(**kwargs)


def test_verdict_round_trips_through_json():
    v = speed_verdict(0.5, 2.0, alignment=8)
    assert SpeedVerdict.from_dict(json.loads(json.dumps(v.to_dict()))) == v
    with pytest.raises(ValueError, match="unknown SpeedVerdict key\\(s\\)"):
        SpeedVerdict.from_dict({**v.to_dict(), "alignment": 8})
    with pytest.raises(ValueError, match="level"):
        SpeedVerdict("fine", 1.0, 1.0, 1.0, "")


def test_row_without_a_measured_speedup_has_no_verdict():
    row = {"runtime": "onnxruntime", "device": "cpu", "batch_size": 1, "bundle": "c", "baseline": "b",
           "practical": None, "theoretical": 2.0, "efficiency": None}
    assert row_verdict(row) is None
    assert speed_warnings({"speedup": [row]}) == []


def _with_history(*steps: dict) -> BenchBundle:
    return BenchBundle("c", "candidate", Path("c"), (3, 8, 8), {"recipe": {"history": [*steps, {"step": "fold"}]}})


def test_bundle_alignment_comes_from_the_pruning_recipe():
    prune = {"step": "prune", "config": {"round_to": 8}}
    auto = {"step": "prune", "config": {"round_to": "auto", "alignment": {"kinds": {"conv": 16, "linear": 1}}}}
    strategy = {"step": "strategy", "recipe": {"prune": {"round_to": 4}}}
    assert _with_history(prune).alignment == 8
    assert _with_history(auto).alignment == 16
    assert _with_history(prune, strategy).alignment == 4  # the coarsest guarantee over the steps
    assert _with_history().alignment is None  # not pruned
    assert _with_history({"step": "prune", "config": {"round_to": "auto"}}).alignment is None  # unresolved
    assert BenchBundle("c", "candidate", Path("c"), (3, 8, 8), {}).alignment is None


# ----------------------------------------------------------------------------- compressor bench, end to end

needs_onnxruntime = pytest.mark.skipif(get_runtime("onnxruntime").is_available() is not None,
                                       reason=f"onnxruntime unavailable: {get_runtime('onnxruntime').is_available()}")


class _Conv(nn.Module):
    """One 3x3 conv over 32 channels and a global average pool; ``padding`` > 0 adds element-wise
    work (upsampling by ``padding``, then sines) that the FLOPs counter does not see."""

    def __init__(self, width: int, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(32, width, 3, padding=1)
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        out = y.mean(dim=(2, 3))
        if self.padding:
            z = F.interpolate(y, scale_factor=self.padding, mode="nearest")
            for _ in range(4):
                z = torch.sin(z * 1.3 + 0.1)
            out = out + 1e-3 * z.mean(dim=(2, 3))
        return out


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("speed")
    slow = _Conv(64, padding=4)
    # recorded as pruned with --round-to 16, as `compressor prune` would: the bench reads it from the recipe
    slow.compressor_metadata = {"history": [{"step": "prune", "config": {"round_to": 16}}]}
    models = {"base": _Conv(128), "fast": _Conv(64), "slow": slow}
    for name, model in models.items():
        export_bundle(model.eval(), root / name, (32, 32, 32),
                      BundleConfig(targets=("onnx",), batch_sizes=(2,), threads=1), source=name)
    return {name: root / name for name in models}


def _bench(bundles: dict[str, Path], candidate: str, out: Path, capsys: pytest.CaptureFixture, *timing: str):
    code = cli(["bench", str(bundles[candidate]), "--baseline", str(bundles["base"]), "--runtimes", "onnxruntime",
                "--batch-sizes", "2", "--threads", "1", "--no-memory", "--quiet", "--warmup", "2", *timing,
                "--output", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err  # a slow candidate is a warning, not a failure
    return json.loads((out / "results.json").read_text()), printed


@needs_onnxruntime
def test_slower_candidate_is_warned_about_everywhere(bundles, tmp_path, capsys):
    out = tmp_path / "report"
    results, printed = _bench(bundles, "slow", out, capsys,
                              "--min-runs", "5", "--max-runs", "40", "--min-seconds", "0", "--max-seconds", "1")
    (row,) = results["speedup"]
    assert row["theoretical"] == pytest.approx(2.0, rel=0.01)
    assert row["practical"]["speedup_median"] < 1 / 5  # about 20x slower: far from the noise
    verdict = row["verdict"]
    assert verdict["level"] == "slower"
    assert "multiples of 16" in verdict["message"]  # the alignment came from the bundle's recipe

    warned = [line for line in printed.err.splitlines() if line.startswith("speed warning")]
    assert warned == [f"speed warning (slower): slow vs base on cpu: {verdict['message']}"]

    summary = (out / "summary.md").read_text()
    assert summary.index(f"## {SPEED_WARNINGS}") < summary.index("## Environment")  # at the top
    section = summary.split(f"## {SPEED_WARNINGS}")[1].split("\n## ")[0]
    (line,) = [line for line in section.splitlines() if line.startswith("| slow |")]
    assert "| onnxruntime | cpu | 2 | slower |" in line and "| 2.00x |" in line
    assert "{:.2f}x [".format(row["practical"]["speedup_median"]) in line and verdict["message"] in line

    page = (out / "report.html").read_text()
    block = page.split('<div class="speed-warnings" role="alert">')[1].split("</div>")[0]
    assert page.index('class="speed-warnings"') < page.index("<h2>Environment</h2>")
    assert SPEED_WARNINGS in block and "<td>slow</td>" in block and "<td>slower</td>" in block

    schema = json.loads((PROJECT / "benchmarks" / "results.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(results)


@needs_onnxruntime
def test_genuinely_faster_candidate_is_not_warned_about(bundles, tmp_path, capsys):
    out = tmp_path / "report"
    results, printed = _bench(bundles, "fast", out, capsys,
                              "--min-runs", "20", "--max-runs", "300", "--min-seconds", "1", "--max-seconds", "2")
    (row,) = results["speedup"]
    assert row["theoretical"] == pytest.approx(2.0, rel=0.01)
    assert row["verdict"]["level"] == "ok", row["verdict"]["message"]
    assert "speed warning" not in printed.err
    assert SPEED_WARNINGS not in (out / "summary.md").read_text()
    assert "speed-warnings\"" not in (out / "report.html").read_text()


@needs_onnxruntime
def test_report_written_before_verdicts_still_warns(bundles, tmp_path, capsys):
    """An older results.json has no ``verdict`` on its speedup rows: it still loads, and the report
    judges the rows itself (alignment unknown, so it suggests rounding the widths)."""
    results, _ = _bench(bundles, "slow", tmp_path / "report", capsys,
                        "--min-runs", "5", "--max-runs", "20", "--min-seconds", "0", "--max-seconds", "0.5")
    old = copy.deepcopy(results)
    for row in old["speedup"]:
        del row["verdict"]
    validate_results(old)
    assert row_verdict(old["speedup"][0]).level == "slower"
    summary = render_markdown(old)
    assert f"## {SPEED_WARNINGS}" in summary and FIX_UNALIGNED in summary

    bad = copy.deepcopy(results)
    bad["speedup"][0]["verdict"]["level"] = "fine"
    with pytest.raises(ValueError, match=r"\$\.speedup\[0\]\.verdict\.level"):
        validate_results(bad)


def test_int8_verdict_names_the_int8_factor_and_no_alignment_cause_when_nothing_was_pruned():
    # an unpruned INT8 candidate against its FP32 baseline: expected = FLOPs 1.0 x INT8 factor 1.96
    verdict = speed_verdict(1.46, 1.96, ci=(1.43, 1.49), runtime="onnxruntime", batch_size=1, int8_factor=1.96)
    assert verdict.level == "inefficient" and verdict.efficiency == pytest.approx(1.46 / 1.96)
    assert "against an expected 1.96x (FLOPs 1.00x times the INT8 factor 1.96x its export measured)" in verdict.message
    assert "export's speed guard" in verdict.message and "round-to" not in verdict.message
    # pruned and INT8: the alignment advice stays, the INT8 cause is added
    pruned = speed_verdict(2.0, 4.0, runtime="openvino", batch_size=1, int8_factor=2.0)
    assert "FLOPs 2.00x times the INT8 factor 2.00x" in pruned.message and "round-to" in pruned.message
