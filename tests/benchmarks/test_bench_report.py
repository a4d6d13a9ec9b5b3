"""benchmarks._report on synthetic results dicts: schema, files, numbers, partial runs, atomicity."""
from __future__ import annotations

import copy
import csv
import json

import numpy as np
import pytest

import benchmarks._report as _report
from benchmarks._report import (
    PLOT_FILES,
    REPORT_FILES,
    render_markdown,
    validate_results,
    write_report,
)
from benchmarks._stats import paired_speedup, summarize

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RESAMPLES = 200  # bootstrap resamples: enough for an interval, fast to compute
FLOPS = {"base": 80_000_000, "pruned": 40_000_000}  # theoretical speedup 2.0
SPEEDUP = 1.8  # candidate's per-round ratio; efficiency 1.8 / 2.0 = 90%


def _bundle(name: str, role: str, trained: bool | None) -> dict:
    return {"name": name, "role": role, "path": f"/tmp/bundle_{name}", "input_shape": [3, 32, 32],
            "flops": FLOPS[name], "params": FLOPS[name] // 300, "mps_bytes": FLOPS[name] // 75,
            "fm_elements": 100_000, "weights_trained": trained, "source": "resnet20",
            "artifacts": {"onnx": "model.onnx"}}


def make_results(*, runtimes=("onnxruntime", "openvino"), batch_sizes=(1, 2, 4), baseline=True, memory=True,
                 oom: tuple[str, int, str] | None = None) -> dict:
    """A complete results dict with real stats dicts from synthetic samples.

    ``oom=(runtime, batch_size, bundle)`` marks that combination out of memory (stats null) and
    drops its speedup row; ``baseline=False`` leaves only the candidate and no speedup rows.
    """
    rng = np.random.default_rng(0)
    names = ["base", "pruned"] if baseline else ["pruned"]
    bundles = [_bundle(n, "baseline" if n == "base" else "candidate", n == "pruned" or None) for n in names]
    latency, speedup, mem = [], [], []
    for runtime in runtimes:
        for bs in batch_sizes:
            cand_ms = 1.0 * bs + rng.random(12) * 0.1
            samples = {"base": cand_ms * SPEEDUP, "pruned": cand_ms}
            for name in names:
                key = {"runtime": runtime, "device": "cpu", "batch_size": bs, "bundle": name}
                failed = oom == (runtime, bs, name)
                stats = None if failed else summarize(samples[name], bs, resamples=RESAMPLES).to_dict()
                latency.append({**key, "status": "oom" if failed else "ok",
                                "error": "out of memory" if failed else None, "stats": stats,
                                "settings": {"threads": 2}})
                if memory:
                    theoretical = FLOPS[name] // 75 + 100_000 * 4 * bs
                    mem.append({**key, "status": "oom" if failed else "ok",
                                "error": "out of memory" if failed else None,
                                "measured_bytes": None if failed else 3 * theoretical,
                                "peak_bytes": None if failed else 400_000_000, "theoretical_bytes": theoretical,
                                "detail": None if failed else {"runs": 3}})
            if baseline and oom not in ((runtime, bs, "base"), (runtime, bs, "pruned")):
                practical = paired_speedup(samples["base"], samples["pruned"], resamples=RESAMPLES)
                speedup.append({"runtime": runtime, "device": "cpu", "batch_size": bs, "bundle": "pruned",
                                "baseline": "base", "practical": practical.to_dict(), "theoretical": 2.0,
                                "efficiency": practical.speedup_median / 2.0})
    return {
        "schema_version": 1, "kind": "cnn-compressor-benchmark", "created_utc": "2026-11-21T10:00:00Z",
        "complete": True, "interrupted": False,
        "environment": {"cpu_model": "AMD EPYC 7B13", "cpu_cores_logical": 2, "cpu_cores_available": 2,
                        "os": "Linux-6.1-x86_64", "python": "3.11.9", "hostname": "host", "gpu": None,
                        "versions": {"torch": "2.5.0", "onnxruntime": "1.20.0", "tensorrt": None},
                        "git_sha": "31d316d", "git_dirty": False},
        "config": {"runtimes": list(runtimes), "batch_sizes": list(batch_sizes), "devices": ["cpu"], "threads": 2,
                   "rounds": 12},
        "bundles": bundles, "latency": latency, "speedup": speedup, "memory": mem,
        "skipped": [{"runtime": "tensorrt", "device": "cpu", "reason": "tensorrt is not installed"}],
        "warnings": ["weights of 'base' are not trained"],
    }


@pytest.fixture(scope="module")
def full() -> dict:
    return make_results()


@pytest.fixture(scope="module")
def report(full, tmp_path_factory):
    return write_report(full, tmp_path_factory.mktemp("r") / "report")


# ----------------------------------------------------------------------------- schema

def test_schema_accepts_full_results(full):
    validate_results(full)
    validate_results(make_results(baseline=False, memory=False, batch_sizes=(8,), oom=("openvino", 8, "pruned")))


def _without(path: list, key: str):
    def edit(results):
        obj = results
        for p in path:
            obj = obj[p]
        del obj[key]
    return edit


def _set(path: list, value):
    def edit(results):
        obj = results
        for p in path[:-1]:
            obj = obj[p]
        obj[path[-1]] = value
    return edit


@pytest.mark.parametrize("edit, expected", [
    (_without([], "complete"), ["$:", "'complete' is a required property"]),
    (_without(["latency", 0], "status"), ["$.latency[0]", "'status' is a required property"]),
    (_without(["environment"], "git_sha"), ["$.environment", "'git_sha'"]),
    (_without(["speedup", 1, "practical"], "speedup_ci"), ["$.speedup[1].practical", "speedup_ci"]),
    (_set(["latency", 0, "batch_size"], "1"), ["$.latency[0].batch_size", "not of type 'integer'"]),
    (_set(["latency", 2, "stats", "latency_ms_median"], "fast"), ["$.latency[2].stats", "latency_ms_median"]),
    (_set(["complete"], "yes"), ["$.complete", "not of type 'boolean'"]),
    (_set(["latency", 1, "status"], "crashed"), ["$.latency[1].status", "'crashed' is not one of"]),
    (_set(["bundles", 0, "role"], "reference"), ["$.bundles[0].role", "is not one of"]),
    (_set(["config", "devices"], ["tpu"]), ["$.config.devices[0]", "'tpu'"]),
    (_set(["schema_version"], 3), ["$.schema_version", "3 is not one of [1, 2]"]),
    (_set(["schema_version"], 2), ["$.latency[0]", "'precision' is a required property"]),  # version 2 rows say it
    (_set(["latency", 0, "stats"], None), ["$.latency[0].stats", "None is not of type 'object'"]),
    (_set(["memory", 0, "status"], "error"), ["$.memory[0].error", "None is not of type 'string'"]),
    (_set(["surprise"], 1), ["$:", "'surprise' was unexpected"]),
    (_set(["speedup", 0, "bundle"], "ghost"), ["$.speedup[0].bundle", "'ghost' is not a bundle"]),
    (_set(["speedup", 0, "baseline"], "pruned"), ["$.speedup[0].baseline", "is a candidate, not a baseline"]),
    (_set(["speedup", 0, "bundle"], "base"), ["$.speedup[0].bundle", "is a baseline, not a candidate"]),
    (_set(["bundles", 1, "name"], "base"), ["$.bundles[1].name", "used twice"]),
    (_set(["speedup", 0, "theoretical"], None), ["$.speedup[0].efficiency", "is not of type 'null'"]),
])
def test_schema_rejects_with_the_json_path(full, edit, expected):
    bad = copy.deepcopy(full)
    edit(bad)
    with pytest.raises(ValueError) as info:
        validate_results(bad)
    for text in expected:
        assert text in str(info.value)


def test_not_an_object_is_a_value_error():
    with pytest.raises(ValueError, match=r"at \$: \[\] is not of type 'object'"):
        validate_results([])


def test_render_markdown_validates(full):
    bad = copy.deepcopy(full)
    bad["warnings"] = "none"
    with pytest.raises(ValueError, match=r"\$\.warnings"):
        render_markdown(bad)


def test_not_json_serialisable_is_a_value_error(full):
    bad = copy.deepcopy(full)
    bad["config"]["threads"] = object()
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        validate_results(bad)


def test_schema_file_is_package_data():
    from importlib import resources

    schema = json.loads(resources.files("benchmarks").joinpath("results.schema.json").read_text())
    assert schema["$schema"].endswith("2020-12/schema")
    assert schema["properties"]["schema_version"] == {"enum": [1, 2]}  # writes 2, reads 1


# ----------------------------------------------------------------------------- the report

def test_write_report_writes_every_file(report):
    assert sorted(p.name for p in report.iterdir()) == sorted(REPORT_FILES)
    assert not [p for p in report.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


@pytest.mark.parametrize("name", PLOT_FILES)
def test_plots_are_pngs(report, name):
    from matplotlib.image import imread

    data = (report / name).read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    image = imread(report / name)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[0] >= 200 and image.shape[1] >= 300


def test_results_json_round_trips(full, report):
    loaded = json.loads((report / "results.json").read_text())
    assert loaded == json.loads(json.dumps(full))
    validate_results(loaded)


def test_csv_rows_hold_the_unrounded_stats(full, report):
    with open(report / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(full["latency"])
    assert list(rows[0]) == list(_report.CSV_COLUMNS)
    by_key = {(r["runtime"], int(r["batch_size"]), r["bundle"]): r for r in rows}
    for lat in full["latency"]:
        row = by_key[(lat["runtime"], lat["batch_size"], lat["bundle"])]
        assert float(row["latency_ms_median"]) == lat["stats"]["latency_ms_median"]
        assert float(row["latency_ms_ci_low"]) == lat["stats"]["median_ci_ms"][0]
        assert int(row["n"]) == lat["stats"]["n"]
    for sp in full["speedup"]:
        row = by_key[(sp["runtime"], sp["batch_size"], sp["bundle"])]
        assert float(row["speedup_practical"]) == sp["practical"]["speedup_median"]
        assert float(row["efficiency"]) == sp["efficiency"]
    base = by_key[("onnxruntime", 1, "base")]
    assert base["role"] == "baseline" and base["speedup_practical"] == "" and base["error"] == ""
    assert int(base["memory_measured_bytes"]) == full["memory"][0]["measured_bytes"]


def test_summary_tables(full, report):
    text = (report / "summary.md").read_text()
    assert text == render_markdown(full)
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| runtime | device | batch | bundle | role"))
    assert "median ms [95% CI]" in lines[header] and lines[header + 1].startswith("|---|")
    body = [line for line in lines[header + 2:] if line.startswith("|")]
    body = body[:next((i for i, line in enumerate(body) if line.startswith("| runtime")), len(body))]
    assert len(body) == len(full["latency"])
    pruned = next(line for line in body if "| pruned |" in line)
    assert "| 2.00x | 90% |" in pruned  # theoretical speedup and efficiency
    assert "1.80x [" in pruned
    assert "AMD EPYC 7B13" in text and "31d316d" in text and "complete" in text
    assert "base: unknown, pruned: yes" in text  # weights trained
    assert "measured TRM MiB" in text and "tensorrt/cpu: tensorrt is not installed" in text


def test_html_is_self_contained(report):
    page = (report / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 4
    assert page.count("<table>") == 3  # bundles, latency/speedup, memory
    assert "AMD EPYC 7B13" in page and "<img src=\"http" not in page


def test_html_escapes_strings(tmp_path):
    results = make_results(runtimes=("onnxruntime",), batch_sizes=(1,))
    results["warnings"] = ["<script>alert(1)</script>"]
    results["environment"]["cpu_model"] = "A & B"
    page = (write_report(results, tmp_path / "r") / "report.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page and "A &amp; B" in page


def test_partial_results_still_write_every_file(tmp_path):
    results = make_results(runtimes=("onnxruntime",), batch_sizes=(4,), baseline=False, memory=False,
                           oom=("onnxruntime", 4, "pruned"))
    results.update(complete=False, interrupted=True)
    out = write_report(results, tmp_path / "partial")
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT_FILES)
    for name in PLOT_FILES:
        assert (out / name).read_bytes().startswith(PNG_SIGNATURE)
    text = (out / "summary.md").read_text()
    assert "| oom |" in text and "out of memory" in text and "interrupted" in text
    assert "No memory rows" in text
    with open(out / "results.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["status"] == "oom" and row["latency_ms_median"] == "" and row["error"] == "out of memory"


def test_oom_row_among_good_ones(tmp_path):
    results = make_results(oom=("openvino", 4, "pruned"))
    out = write_report(results, tmp_path / "oom")
    text = (out / "summary.md").read_text()
    assert "| openvino | cpu | 4 | pruned | candidate | oom |" in text
    assert "memory: openvino/cpu batch 4 pruned: oom: out of memory" in text


def test_failed_write_leaves_the_old_report(full, tmp_path, monkeypatch):
    out = write_report(make_results(runtimes=("onnxruntime",), batch_sizes=(1,), memory=False), tmp_path / "r")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = copy.deepcopy(full)
    del bad["latency"][0]["stats"]
    with pytest.raises(ValueError, match=r"\$\.latency\[0\]"):
        write_report(bad, out)

    def broken(results):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(_report, "_plots", broken)
    with pytest.raises(RuntimeError, match="plotting failed"):
        write_report(full, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["r"]  # no half-written sibling left behind
