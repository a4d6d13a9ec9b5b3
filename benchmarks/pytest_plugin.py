"""A pytest fixture that times a bundle with pytest-benchmark, for a quick regression signal.

Installing the package enables it in every pytest run of that environment (a ``pytest11`` entry
point; ``pytest -p no:benchmarks.pytest_plugin`` turns it off). Without the install, enable it with
``pytest -p benchmarks.pytest_plugin``, or in your ``conftest.py`` (with the install as well, it is
registered once)::

    pytest_plugins = ["benchmarks.pytest_plugin"]

An example test (one ``run`` per test: parametrise over bundles, runtimes and batch sizes)::

    import pytest

    @pytest.mark.parametrize("batch_size", [1, 8])
    def test_pruned_latency(bundle_benchmark, batch_size):
        stats = bundle_benchmark("bundles/pruned", runtime="onnxruntime", batch_size=batch_size)
        if stats is not None:                       # None under --benchmark-disable or xdist
            assert stats.latency_ms_median < 50

Compare against a baseline::

    git checkout main   && pytest tests/perf --benchmark-autosave       # saves .benchmarks/<machine>/0001_*.json
    git checkout branch && pytest tests/perf --benchmark-compare --benchmark-compare-fail=median:10%

``--benchmark-compare`` takes the latest saved run (or ``=0001`` for a given one),
``--benchmark-save=NAME`` names a run, ``--benchmark-storage=DIR`` moves the storage and
``--benchmark-json=FILE`` writes every raw sample. Benchmarks are matched by test id, so a renamed
or re-parametrised test has no baseline.

Limits, and when to use ``compressor gate`` instead:

* The timing is pytest-benchmark's host-side clock (``time.perf_counter``) around one Python
  ``session.run_all(x)`` call: numpy in, every output out (as ``compressor bench`` times), the
  Python <-> runtime overhead and, on a GPU, the copies to and from the device. There are no
  device events.
* The baseline was measured at another time, perhaps on another machine or under another load;
  the runs are not interleaved, so drift (frequency scaling, thermal state, neighbours) shows up
  as a difference. pytest-benchmark only warns when the saved machine info differs.
* ``--benchmark-compare-fail`` compares one statistic (mean, median, min, ...) against a
  percentage or absolute threshold, with no confidence interval: on a noisy machine it raises
  false alarms, and a small regression hides under the threshold. The rounds are fixed (no
  calibration), so small ``rounds`` make the statistic noisier still.
* Under pytest-xdist (``-n``) and ``--benchmark-disable`` pytest-benchmark runs each test once,
  untimed, and ``run`` returns ``None``.

For release decisions use ``compressor gate``: it times baseline and candidate in interleaved
rounds in one process, gives bootstrap confidence bounds on medians and speedups, checks budgets
per runtime and batch size, memory and accuracy, and writes JUnit XML. Use this fixture for a
quick signal inside an existing pytest suite.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks._env import available_cores
from benchmarks._stats import LatencyStats, summarize
from benchmarks._sweep import _Inputs, _runtime_target, load_bench_bundles
from benchmarks._timing import has_subnormals
from runtimes import BundleError, SessionConfig, get_runtime

__all__ = ["bundle_benchmark"]

TIMING_NOTE = "host-side pytest-benchmark timer around one session.run_all(x) call (numpy in, every output out)"


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _make_runner(benchmark: Any) -> Callable[..., LatencyStats | None]:
    used = False

    def run(bundle_dir: str | Path, runtime: str = "onnxruntime", batch_size: int = 1, threads: int | None = None,
            device: str = "cpu", rounds: int = 50, warmup_rounds: int = 5, seed: int = 0, *,
            runtime_options: dict[str, Any] | None = None) -> LatencyStats | None:
        """Time ``session.run_all(x)`` on one bundle's artifact for ``runtime`` with pytest-benchmark.

        Args:
            bundle_dir: a directory written by ``compressor export``.
            runtime: a runtime name (``runtimes.list_runtimes()``); it loads its own artifact
                (onnxruntime the ``onnx`` one, openvino ``openvino``, ...).
            batch_size: rows of the input batch.
            threads: intra-op CPU threads; ``None`` uses the cores available to this process on
                the CPU and the runtime's default on a GPU.
            device: ``"cpu"``, ``"cuda"`` or ``"gpu"`` (OpenVINO's GPU plugin).
            rounds, warmup_rounds: timed and untimed calls (one call per round).
            seed: seed of the random-normal float32 input (the same batch as ``compressor bench``).
            runtime_options: the runtime's constructor options, e.g. ``{"allow_spinning": False}``.

        Returns:
            The latencies in ms (:class:`benchmarks.LatencyStats`, raw samples kept), or ``None``
            when pytest-benchmark is disabled (``--benchmark-disable``, xdist) and ran one call.

        Raises:
            pytest.skip.Exception: the runtime cannot run on ``device`` here; the reason is given.
            ValueError: a bad argument, or an unknown runtime (the message lists the known ones).
            runtimes.BundleError: the bundle is missing, invalid, or has no artifact for ``runtime``.
            RuntimeError: called a second time in one test.
        """

        nonlocal used
        if used:
            raise RuntimeError("bundle_benchmark runs once per test (pytest-benchmark records one benchmark per "
                               "test); parametrise the test over bundles, runtimes or batch sizes instead")
        _check_int("batch_size", batch_size, 1)
        _check_int("rounds", rounds, 1)
        _check_int("warmup_rounds", warmup_rounds, 0)
        if threads is not None:
            _check_int("threads", threads, 1)
        rt = get_runtime(runtime, **(runtime_options or {}))
        used = True

        # the bundle is the test's own input, so a wrong one is an error on every machine; a
        # runtime that cannot run here is a skip (as `compressor bench` does)
        bundle = load_bench_bundles([bundle_dir])[0]
        artifact = bundle.artifact(runtime)
        if artifact is None:
            target = _runtime_target(runtime)
            raise BundleError(f"bundle {bundle.path} has no {target!r} artifact, which runtime {runtime!r} loads; "
                              f"it has {sorted(bundle.manifest.get('artifacts') or {})}. Re-export it with "
                              f"`compressor export ... --to {target}` or benchmark another runtime")
        reason = rt.is_available(device=device)
        if reason is None and runtime == "tensorrt" and device == "cpu":
            reason = "TensorRT runs on CUDA devices only"
        if reason is not None:
            pytest.skip(f"{runtime} cannot run on {device}: {reason}")

        if threads is None and device == "cpu":
            threads = available_cores()
        x = _Inputs(bundle.input_shape, None, seed).batch(batch_size)
        described = bundle.to_dict()
        config = SessionConfig(device=device, threads=threads if device == "cpu" else None,
                               precision=bundle.artifact_precision(runtime))  # an INT8 bundle's artifact is INT8
        with rt.load(artifact, config) as session:
            settings = session.settings
            if device == "cpu" and settings.get("flush_denormal") is False:
                warnings.warn(f"{runtime} does not flush subnormal floats for {bundle.name}; CPU timings of a "
                              "random-weight model may be distorted", RuntimeWarning, stacklevel=2)
            if device == "cpu" and any(has_subnormals(out) for out in session.run_all(x)):
                warnings.warn(f"{bundle.name} produces subnormal outputs on {runtime}; CPU timings may be distorted "
                              "(random weights?)", RuntimeWarning, stacklevel=2)
            if benchmark.group is None:  # a @pytest.mark.benchmark(group=...) wins
                benchmark.group = f"{runtime}-{device}-bs{batch_size}"
            benchmark.extra_info.update({
                "bundle": bundle.name, "bundle_path": str(bundle.path), "runtime": runtime, "device": device,
                "batch_size": batch_size, "threads": threads, "input_shape": list(bundle.input_shape),
                "seed": seed, "rounds": rounds, "warmup_rounds": warmup_rounds,
                "flops": described["flops"], "params": described["params"],
                "weights_trained": described["weights_trained"], "settings": settings, "timing": TIMING_NOTE,
            })
            benchmark.pedantic(session.run_all, args=(x,), rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
        if benchmark.disabled or benchmark.stats is None:
            return None
        stats = summarize([s * 1000.0 for s in benchmark.stats.stats.data], batch_size, seed=seed)
        benchmark.extra_info["latency_ms_median_ci"] = list(stats.median_ci_ms)
        return stats

    return run


@pytest.fixture
def bundle_benchmark(benchmark: Any) -> Callable[..., LatencyStats | None]:
    """``run(bundle_dir, runtime="onnxruntime", batch_size=1, threads=None, device="cpu", rounds=50,
    warmup_rounds=5, seed=0)``: time one bundle with pytest-benchmark's ``benchmark`` fixture and
    return its :class:`benchmarks.LatencyStats` (see this module's docstring for the limits)."""
    return _make_runner(benchmark)
