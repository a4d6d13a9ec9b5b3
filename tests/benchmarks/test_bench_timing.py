"""benchmarks._timing with fake callables: warm-up, run and time bounds, interleaving, denormals.

No test asserts how fast anything is: only counts, orders, the loop's own bounds and relative
comparisons.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks._stats import paired_speedup
from benchmarks._timing import (
    TimingConfig,
    flush_denormals,
    has_subnormals,
    interleaved,
    rotation,
    time_callable,
)

ROOT = Path(__file__).resolve().parents[2]
FAST = dict(warmup=0, min_seconds=0.0, max_seconds=30.0)  # count-bounded configs for the fake callables


class Counter:
    """A zero-argument callable that counts its calls (and optionally logs a name)."""

    def __init__(self, name: str = "", log: list[str] | None = None, work: int = 0):
        self.calls = 0
        self.name, self.log, self.work = name, log, work

    def __call__(self) -> int:
        self.calls += 1
        if self.log is not None:
            self.log.append(self.name)
        return sum(range(self.work))  # busy loop: work proportional to self.work


# --- TimingConfig -----------------------------------------------------------------------------
def test_config_defaults_and_round_trip():
    c = TimingConfig()
    assert (c.warmup, c.min_runs, c.max_runs, c.min_seconds, c.max_seconds) == (10, 20, 1000, 1.0, 10.0)
    custom = TimingConfig(warmup=0, min_runs=3, max_runs=3, min_seconds=0, max_seconds=0.5)
    assert TimingConfig.from_dict(json.loads(json.dumps(custom.to_dict()))) == custom
    with pytest.raises(ValueError, match="unknown TimingConfig key\\(s\\)"):
        TimingConfig.from_dict({"repeats": 3})
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.warmup = 1  # type: ignore[misc]


@pytest.mark.parametrize("kwargs, message", [
    (dict(warmup=-1), "warmup"),
    (dict(warmup=1.5), "warmup"),
    (dict(min_runs=0), "min_runs"),
    (dict(max_runs=True), "max_runs"),
    (dict(min_runs=50, max_runs=10), "min_runs .50. must not exceed max_runs .10."),
    (dict(min_seconds=-0.1), "min_seconds"),
    (dict(max_seconds=0), "max_seconds"),
    (dict(max_seconds=float("nan")), "max_seconds"),
    (dict(min_seconds=5.0, max_seconds=1.0), "min_seconds .5.0. must not exceed max_seconds .1.0."),
])
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TimingConfig(**kwargs)


def test_config_stopping_rule():
    c = TimingConfig(min_runs=5, max_runs=100, min_seconds=1.0, max_seconds=10.0)
    assert not c.done(4, 2.0)    # time reached, runs not
    assert not c.done(50, 0.5)   # runs reached, time not
    assert c.done(5, 1.0)        # both minima reached
    assert c.done(100, 0.0)      # max_runs wins
    assert c.done(1, 10.0)       # max_seconds wins over min_runs


# --- time_callable ----------------------------------------------------------------------------
def test_warmup_calls_are_not_timed():
    fn = Counter()
    samples = time_callable(fn, TimingConfig(**{**FAST, "warmup": 7}, min_runs=5, max_runs=5))
    assert fn.calls == 12
    assert len(samples) == 5
    assert all(isinstance(s, float) and s >= 0 for s in samples)


def test_stops_at_min_runs_when_min_seconds_is_zero():
    fn = Counter()
    assert len(time_callable(fn, TimingConfig(**FAST, min_runs=9, max_runs=1000))) == 9
    assert fn.calls == 9


def test_max_runs_bounds_a_long_min_seconds():
    fn = Counter()
    samples = time_callable(fn, TimingConfig(warmup=0, min_runs=1, max_runs=8, min_seconds=20.0, max_seconds=30.0))
    assert len(samples) == 8 == fn.calls


def test_max_seconds_bounds_the_run():
    def sleepy() -> None:
        time.sleep(0.001)

    config = TimingConfig(warmup=0, min_runs=1000, max_runs=1000, min_seconds=0.0, max_seconds=0.05)
    samples = time_callable(sleepy, config)
    assert 1 <= len(samples) < 1000  # each call sleeps >= 1 ms, so 50 ms cannot hold 1000 of them


def test_min_seconds_keeps_running_past_min_runs():
    fn = Counter()
    config = TimingConfig(warmup=0, min_runs=1, max_runs=10_000_000, min_seconds=0.03, max_seconds=30.0)
    start = time.perf_counter()
    samples = time_callable(fn, config)
    assert time.perf_counter() - start >= 0.03  # the loop's own bound, not a speed claim
    assert len(samples) > 1


def test_samples_are_milliseconds():
    """Unit check without asserting any absolute time: the per-call samples add up to the wall
    time measured around the loop, in milliseconds (seconds or nanoseconds would be off by 1e3)."""
    config = TimingConfig(warmup=0, min_runs=5, max_runs=5, min_seconds=0.0, max_seconds=30.0)
    start = time.perf_counter()
    samples = time_callable(lambda: time.sleep(0.002), config)
    wall_ms = (time.perf_counter() - start) * 1000
    assert 0.5 * wall_ms <= sum(samples) <= wall_ms


def test_more_work_takes_longer_relative():
    config = TimingConfig(warmup=2, min_runs=15, max_runs=15, min_seconds=0.0, max_seconds=30.0)
    one = np.median(time_callable(Counter(work=20_000), config))
    four = np.median(time_callable(Counter(work=80_000), config))
    assert four > one


def test_exceptions_propagate():
    def broken() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        time_callable(broken, TimingConfig(**FAST, min_runs=1, max_runs=1))


def test_device_validation():
    with pytest.raises(ValueError, match="device must be one of 'cpu', 'cuda'"):
        time_callable(Counter(), TimingConfig(**FAST, min_runs=1, max_runs=1), device="tpu")


def test_cuda_timing_without_cuda_says_why():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present; see test_cuda_events_time_gpu_work")
    with pytest.raises(RuntimeError, match="CUDA device"):
        time_callable(Counter(), TimingConfig(**FAST, min_runs=1, max_runs=1), device="cuda")


@pytest.mark.gpu
def test_cuda_events_time_gpu_work():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device (torch.cuda.is_available() is False)")
    a = torch.randn(512, 512, device="cuda")
    small = time_callable(lambda: a @ a, TimingConfig(warmup=3, min_runs=10, max_runs=10, min_seconds=0.0))
    b = torch.randn(2048, 2048, device="cuda")
    large = time_callable(lambda: b @ b, TimingConfig(warmup=3, min_runs=10, max_runs=10, min_seconds=0.0))
    assert np.median(large) > np.median(small) > 0


# --- interleaved ------------------------------------------------------------------------------
def test_rotation():
    names = ["a", "b", "c"]
    assert [rotation(names, i) for i in range(4)] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"],
                                                      ["a", "b", "c"]]
    assert [rotation(["base", "cand"], i) for i in range(3)] == [["base", "cand"], ["cand", "base"],
                                                                 ["base", "cand"]]


def test_interleaved_rotates_the_order_each_round():
    log: list[str] = []
    fns = {n: Counter(n, log) for n in "abc"}
    out = interleaved(fns, TimingConfig(warmup=0, min_seconds=0.0), rounds=4)
    assert list(out) == ["a", "b", "c"]
    assert all(len(v) == 4 for v in out.values())
    assert "".join(log) == "abc" + "bca" + "cab" + "abc"


def test_interleaved_warms_up_each_then_times_rounds():
    log: list[str] = []
    fns = {n: Counter(n, log) for n in ("base", "cand")}
    out = interleaved(fns, TimingConfig(warmup=3, min_runs=6, max_runs=6, min_seconds=0.0))
    assert {n: len(v) for n, v in out.items()} == {"base": 6, "cand": 6}  # config bounds count rounds
    assert fns["base"].calls == fns["cand"].calls == 3 + 6
    assert log[6:] == ["base", "cand", "cand", "base"] * 3  # timed ABBA rounds after 3 warm-up rounds


def test_interleaved_respects_max_seconds_without_rounds():
    fns = {"a": lambda: time.sleep(0.001), "b": lambda: time.sleep(0.001)}
    out = interleaved(fns, TimingConfig(warmup=0, min_runs=1000, max_runs=1000, min_seconds=0.0, max_seconds=0.05))
    assert 1 <= len(out["a"]) == len(out["b"]) < 1000


def test_interleaved_paired_speedup_of_double_work():
    fns = {"base": Counter(work=40_000), "cand": Counter(work=20_000)}
    out = interleaved(fns, TimingConfig(warmup=3, min_seconds=0.0), rounds=31)
    speedup = paired_speedup(out["base"], out["cand"])
    assert speedup.rounds == 31
    assert speedup.speedup_median > 1.0  # base does twice the work: relative, never absolute


@pytest.mark.parametrize("fns, rounds, message", [
    ({}, None, "at least one callable"),
    ({"a": 3}, None, r"fns\['a'\] is not callable"),
    ({"a": Counter()}, 0, "rounds"),
])
def test_interleaved_errors(fns, rounds, message):
    with pytest.raises(ValueError, match=message):
        interleaved(fns, TimingConfig(warmup=0, min_seconds=0.0), rounds=rounds)


# --- denormals --------------------------------------------------------------------------------
def _flushing() -> bool:
    import torch

    return torch.tensor([1e-39], dtype=torch.float32).item() == 0.0


def test_flush_denormals_sets_and_restores():
    import torch

    torch.set_flush_denormal(False)
    try:
        with flush_denormals() as supported:
            if not supported:
                pytest.skip("this CPU cannot flush denormals (torch.set_flush_denormal returned False)")
            assert _flushing()
        assert not _flushing()
        torch.set_flush_denormal(True)
        with flush_denormals():
            assert _flushing()
        assert _flushing()  # it was on before the block, so it stays on
    finally:
        torch.set_flush_denormal(False)


def test_has_subnormals():
    tiny32 = np.finfo(np.float32).tiny
    assert has_subnormals(np.array([1.0, 1e-39], dtype=np.float32))
    assert has_subnormals(np.array([[0.0], [-1e-40]], dtype=np.float32))  # sign and shape do not matter
    assert not has_subnormals(np.array([0.0, tiny32, -tiny32, 1.0], dtype=np.float32))  # tiny is normal
    assert not has_subnormals(np.array([np.nan, np.inf, 0.0], dtype=np.float32))
    assert not has_subnormals(np.array([1e-39]))  # normal in float64
    assert has_subnormals(np.array([1e-310]))
    assert has_subnormals(np.array([1e-6], dtype=np.float16))  # float16's tiny is ~6.1e-5
    assert not has_subnormals(np.zeros((0, 3), dtype=np.float32))
    assert not has_subnormals(np.arange(5))
    with pytest.raises(TypeError, match="real numeric"):
        has_subnormals(np.array(["a"]))


def test_timing_module_does_not_import_torch():
    code = textwrap.dedent("""
        import sys
        from benchmarks._timing import TimingConfig, time_callable, interleaved
        from benchmarks._stats import summarize
        import benchmarks._memory as _memory
        c = TimingConfig(warmup=1, min_runs=2, max_runs=2, min_seconds=0.0)
        summarize(time_callable(lambda: None, c), 1)
        interleaved({"a": lambda: None}, c)
        assert "torch" not in sys.modules, "torch was imported"
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
