"""The timm family sweep: every model of ``benchmarks/timm_sweep.py`` is pruned or refused by name.

Each model (one small variant per timm CNN family, ``pretrained=False``, 64x64 where it runs) is
pruned with the ``random`` criterion to ``target_flops=0.5`` and must equal the masked oracle and
run one train-mode forward and backward pass, or be refused with the error and reason listed in
``EXPECTED_REFUSALS``. A parity failure (a silent wrong result), a model that does not train, an
unexpected exception (an unnamed refusal) or a refusal that is not listed fails the test. The
default run covers ``timm_sweep.FAST``; the rest is marked ``slow`` (CI still runs it).
"""
from __future__ import annotations

import json

import pytest
import torch

from benchmarks import timm_sweep

timm = pytest.importorskip("timm", reason="timm is not installed")

# model -> (error class, substrings of its message that name the cause). Not listed: must prune.
EXPECTED_REFUSALS: dict[str, tuple[str, tuple[str, ...]]] = {
    # DPN's dual path slices its channels at run time: the closest reachable is about 0.51
    "dpn48b": ("UnreachableTargetError", ("target_flops=0.5 is unreachable", "blocked: ", "indexing a channel dim")),
}
FLOPS_TOLERANCE = 0.02  # torch's FlopCounterMode against the graph's cost model, after channel rounding


@pytest.fixture(autouse=True)
def _one_thread(_deterministic):
    """One intra-op thread (after the suite's two): at 64x64 every op is tiny, and each parallel
    region waits for the second thread; on a 2-core machine busy with another process that made
    the sweep 15-50x slower (ghostnet_050: 0.4 s on one thread, 20 s on two)."""
    torch.set_num_threads(1)


def params() -> list:
    return [pytest.param(n, marks=() if n in timm_sweep.FAST else pytest.mark.slow, id=n) for n in timm_sweep.MODELS]


@pytest.mark.parametrize("name", params())
def test_timm_model_is_pruned_with_parity_or_refused_by_name(name: str):
    row = timm_sweep.evaluate(name)
    if name in EXPECTED_REFUSALS:
        error, named = EXPECTED_REFUSALS[name]
        assert row.status == "refused", f"{row.status}: {row.detail}"
        assert row.detail.startswith(f"{error}: "), row.detail
        missing = [s for s in named if s not in row.detail]
        assert not missing, f"the refusal does not name {missing}: {row.detail}"
        return
    assert row.status == "pruned", f"{row.status}: {row.detail}"  # parity, shapes, fewer params and a train step
    assert row.flops_after / row.flops_before <= timm_sweep.TARGET_FLOPS + FLOPS_TOLERANCE
    assert row.params_after < row.params_before


def test_every_family_has_a_model_and_fast_models_are_in_the_sweep():
    assert set(timm_sweep.FAST) <= set(timm_sweep.MODELS)
    assert set(EXPECTED_REFUSALS) <= set(timm_sweep.MODELS)
    families = " ".join(timm_sweep.MODELS.values())
    for family in ("efficientnet", "tf_", "mobilenetv2", "mobilenetv3", "mobilenetv4", "lcnet", "mnasnet", "ghostnet",
                   "regnet (x", "regnet (y", "regnet (z", "resnet (d", "resnext", "resnet (se", "rexnet", "repvgg",
                   "cspresnet", "cspdarknet", "dla", "dpn", "hrnet", "convnext", "efficientformer", "fastvit"):
        assert family in families, family
    assert all(timm.is_model(name) for name in timm_sweep.MODELS)


def test_timm_sweep_script_reports_a_row_per_model(tmp_path, capsys):
    out = tmp_path / "timm.json"
    assert timm_sweep.main(["--models", "lcnet_050", "dpn48b", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| lcnet_050 | lcnet (mobilenetv3) | 64x64 | pruned, parity OK, trains |" in table
    assert "| dpn48b | dpn | 64x64 | refused: UnreachableTargetError: " in table
    data = json.loads(out.read_text())
    assert data["schema_version"] == 1 and data["target_flops"] == 0.5 and data["environment"]["timm"]
    rows = {r["model"]: r for r in data["rows"]}
    assert rows.keys() == {"lcnet_050", "dpn48b"}
    lcnet = rows["lcnet_050"]
    assert lcnet["family"] == "lcnet (mobilenetv3)" and lcnet["input_chw"] == [3, 64, 64]
    assert lcnet["flops_after"] < lcnet["flops_before"] and lcnet["params_after"] < lcnet["params_before"]
    assert lcnet["parity_max_abs_err"] <= 1e-3 * lcnet["oracle_max_abs"]
    assert lcnet["blocked_channels_by_reason"] == {"model output (protected)": timm_sweep.NUM_CLASSES}
    dpn = rows["dpn48b"]  # a refusal still reports what blocks
    assert dpn["status"] == "refused" and dpn["blocked_channels_by_reason"]["indexing a channel dim"] > 0
