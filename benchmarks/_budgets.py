"""Release budgets: a YAML file of rules that ``compressor gate`` checks a benchmark report against.

A budgets file::

    confidence: 0.95            # optional, in (0.5, 1): level of the two-sided intervals used
    decision: point             # optional: point (default), strict or lenient (benchmarks._decision)
    rules:
      - name: edge latency      # optional; defaults to bundle/runtime/device/bsN
        bundle: pruned          # the bundle directory name, as in the report's rows
        runtime: openvino       # one of runtimes.list_runtimes()
        device: cpu             # cpu (default) or cuda
        batch_size: 1
        precision: int8         # optional: fp32, fp16 or int8; the target must be measured at it
        max_p90_ms: 12.5
        min_speedup: 1.3
        max_accuracy_drop: 0.005

Each rule needs at least one budget key (:data:`METRICS`). A rule that names a ``precision``
fails when its target was measured at another one (an INT8 bundle ships FP32 on a runtime whose
INT8 artifact was refused); without it, the rule takes the target at whatever precision it ran.
Every error is a :class:`BudgetError` whose message starts with ``file:line:`` and names the key, e.g.
``budgets.yaml:7: rules[1].max_p90_ms must be a number > 0, got -3``. The same value checks run
in :class:`Rule` and :class:`Budgets` ``__post_init__``, so rules built in Python are validated too.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from compressor.common.errors import CompressorError
from benchmarks._decision import DECISIONS, DEFAULT_DECISION
from benchmarks._precision import PRECISIONS
from runtimes import list_runtimes

__all__ = ["DEFAULT_CONFIDENCE", "METRICS", "BudgetError", "Budgets", "Metric", "Rule", "load_budgets",
           "parse_budgets"]

DEFAULT_CONFIDENCE = 0.95
DEVICES = ("cpu", "cuda")


class BudgetError(CompressorError, ValueError):
    """An invalid budgets file or rule; the message names the file, the line and the key."""


@dataclass(frozen=True)
class Metric:
    """One kind of budget.

    Attributes:
        key: the YAML key, e.g. ``max_p90_ms``.
        direction: ``"max"`` (the measurement must stay at or below the budget) or ``"min"``.
        unit: printed after numbers.
        fraction: the budget is a fraction in [0, 1] (accuracy); otherwise a number > 0.
        description: what is measured.
    """

    key: str
    direction: str
    unit: str
    fraction: bool
    description: str


METRICS: dict[str, Metric] = {m.key: m for m in (
    Metric("max_p50_ms", "max", "ms", False, "median latency per batch"),
    Metric("max_p90_ms", "max", "ms", False, "90th-percentile latency per batch"),
    Metric("max_p99_ms", "max", "ms", False, "99th-percentile latency per batch"),
    Metric("min_throughput_sps", "min", "samples/s", False, "samples per second at the median latency"),
    Metric("max_memory_mb", "max", "MB", False, "measured TRM in MB of 2**20 bytes"),
    Metric("min_accuracy", "min", "", True, "top-1 accuracy as a fraction"),
    Metric("max_accuracy_drop", "max", "", True, "baseline top-1 minus candidate top-1, as a fraction"),
    Metric("min_speedup", "min", "x", False, "practical speedup over the baseline (median of paired ratios)"),
)}
TARGET_KEYS = ("name", "bundle", "runtime", "device", "batch_size")
OPTIONAL_KEYS = ("precision", *METRICS)  # None in a Rule: not set (an explicit YAML null is still an error)
RULE_KEYS = (*TARGET_KEYS, *METRICS, "precision")
TOP_KEYS = ("confidence", "decision", "rules")

# ----------------------------------------------------------------------------- value checks
# Each returns the problem as "must be ..., got ..." or None; callers prefix where it is.


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _budget_problem(key: str, value: Any) -> str | None:
    if METRICS[key].fraction:
        if not _is_number(value) or not 0 <= value <= 1:
            return f"must be a fraction in [0, 1] (e.g. 0.005 for half a point), got {value!r}"
    elif not _is_number(value) or value <= 0:
        return f"must be a number > 0, got {value!r}"
    return None


def _field_problem(key: str, value: Any) -> str | None:
    """What is wrong with ``value`` for rule field ``key``, or None."""
    if key in METRICS:
        return None if value is None else _budget_problem(key, value)
    if key in ("name", "bundle"):
        return None if isinstance(value, str) and value.strip() else f"must be a non-empty string, got {value!r}"
    if key == "device":
        return None if value in DEVICES else f"must be one of {', '.join(DEVICES)}, got {value!r}"
    if key == "batch_size":
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        return None if ok else f"must be an integer >= 1, got {value!r}"
    if key == "precision":
        return None if value in PRECISIONS else f"must be one of {', '.join(PRECISIONS)}, got {value!r}"
    if key == "runtime":
        # lazily, and only the registry: importing runtimes imports no runtime SDK

        known = list_runtimes()
        return None if value in known else f"must be a known runtime ({', '.join(known)}), got {value!r}"
    raise KeyError(key)


def _optional_setting(where: Any, top: dict[str, Any], key: str, default: Any,
                      problem_of: Callable[[Any], str | None]) -> Any:
    """A top-level setting of the budgets file, or ``default``; a bad value is named at its line."""
    if key not in top:
        return default
    node, value = top[key]
    problem = problem_of(value)
    if problem:
        raise where.error(node, f"{key} {problem}")
    return value


def _confidence_problem(value: Any) -> str | None:
    ok = _is_number(value) and 0.5 < value < 1
    return None if ok else f"must be a number in (0.5, 1), e.g. 0.95, got {value!r}"


def _decision_problem(value: Any) -> str | None:
    return None if value in DECISIONS else f"must be one of {', '.join(DECISIONS)}, got {value!r}"


# ----------------------------------------------------------------------------- the dataclasses


@dataclass(frozen=True)
class Rule:
    """Budgets for one (bundle, runtime, device, batch size).

    Attributes:
        bundle: the bundle directory name (the ``bundle`` field of the report's rows).
        runtime: a registered runtime name.
        batch_size: samples per batch of the measurement (accuracy budgets ignore it).
        device: ``"cpu"`` or ``"cuda"``.
        name: how the rule is shown; ``""`` becomes ``bundle/runtime/device/bsN`` (``/int8`` added
            when the rule names a precision).
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"``: the target must have been measured at this
            precision, or every budget of the rule fails; None takes it at any precision.
        max_p50_ms, max_p90_ms, max_p99_ms: latency budgets per batch, in ms.
        min_throughput_sps: samples per second.
        max_memory_mb: measured TRM in MB (2**20 bytes).
        min_accuracy: top-1 as a fraction; max_accuracy_drop: baseline minus candidate top-1.
        min_speedup: practical speedup over the report's baseline bundle.

    Raises:
        BudgetError: a field is invalid or no budget is set.
    """

    bundle: str
    runtime: str
    batch_size: int
    device: str = "cpu"
    name: str = ""
    precision: str | None = None
    max_p50_ms: float | None = None
    max_p90_ms: float | None = None
    max_p99_ms: float | None = None
    min_throughput_sps: float | None = None
    max_memory_mb: float | None = None
    min_accuracy: float | None = None
    max_accuracy_drop: float | None = None
    min_speedup: float | None = None

    def __post_init__(self) -> None:
        if self.name == "":
            suffix = f"/{self.precision}" if self.precision is not None else ""
            object.__setattr__(self, "name", f"{self.bundle}/{self.runtime}/{self.device}/bs{self.batch_size}{suffix}")
        for key in RULE_KEYS:
            if key in OPTIONAL_KEYS and getattr(self, key) is None:
                continue
            problem = _field_problem(key, getattr(self, key))
            if problem:
                raise BudgetError(f"{key} {problem}")
        if not self.budgets:
            raise BudgetError(f"rule {self.name!r} sets no budget; give at least one of {', '.join(METRICS)}")

    @property
    def budgets(self) -> dict[str, float]:
        """The budgets that are set, ``{metric key: value}`` in :data:`METRICS` order."""
        return {k: getattr(self, k) for k in METRICS if getattr(self, k) is not None}

    @property
    def target(self) -> tuple[str, str, str, int]:
        """``(bundle, runtime, device, batch_size)``: what must be measured for this rule."""
        return self.bundle, self.runtime, self.device, self.batch_size

    def to_dict(self) -> dict[str, Any]:
        """The YAML/JSON form: the target, the name, the precision if set and the budgets that are set."""
        precision = {"precision": self.precision} if self.precision is not None else {}
        return {**{k: getattr(self, k) for k in TARGET_KEYS}, **precision, **self.budgets}


@dataclass(frozen=True)
class Budgets:
    """A validated budgets file.

    Attributes:
        rules: at least one rule; names are unique.
        confidence: level of the two-sided confidence intervals the gate uses, in (0.5, 1).
        source: the file it came from, for messages.
        decision: how a measurement is judged against a budget, ``"point"`` (default),
            ``"strict"`` or ``"lenient"`` (:func:`benchmarks._decision.decide`).

    Raises:
        BudgetError: no rules, a bad confidence or decision, or two rules with one name.
    """

    rules: tuple[Rule, ...]
    confidence: float = DEFAULT_CONFIDENCE
    source: str = "<budgets>"
    decision: str = DEFAULT_DECISION

    def __post_init__(self) -> None:
        problem = _confidence_problem(self.confidence)
        if problem:
            raise BudgetError(f"{self.source}: confidence {problem}")
        problem = _decision_problem(self.decision)
        if problem:
            raise BudgetError(f"{self.source}: decision {problem}")
        if not self.rules:
            raise BudgetError(f"{self.source}: rules is empty; give at least one rule")
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise BudgetError(f"{self.source}: two rules are named {rule.name!r}; give them distinct names")
            seen.add(rule.name)

    def to_dict(self) -> dict[str, Any]:
        """The YAML/JSON form, which :func:`parse_budgets` reads back to an equal ``Budgets``."""
        return {"confidence": self.confidence, "decision": self.decision, "rules": [r.to_dict() for r in self.rules]}


# ----------------------------------------------------------------------------- YAML with line numbers


class _Where:
    """Prefixes messages with ``source:line:`` taken from a node's start mark (1-based)."""

    def __init__(self, source: str):
        self.source = source

    def error(self, node: yaml.Node, message: str) -> BudgetError:
        return BudgetError(f"{self.source}:{node.start_mark.line + 1}: {message}")

    def value(self, node: yaml.Node) -> Any:
        """The Python value of a composed node, constructed as ``yaml.safe_load`` would."""
        loader = yaml.SafeLoader("")
        try:
            return loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:  # e.g. a !!python tag, which safe loading refuses
            line = (exc.problem_mark or node.start_mark).line + 1
            raise BudgetError(f"{self.source}:{line}: not valid YAML: {exc.problem or exc}") from None
        finally:
            loader.dispose()

    def mapping(self, node: yaml.Node, what: str, allowed: tuple[str, ...]) -> dict[str, tuple[yaml.Node, Any]]:
        """``{key: (value node, value)}`` of a mapping node; unknown or repeated keys are errors."""
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{what} must be a mapping with keys {', '.join(allowed)}, got {self.value(node)!r}")
        out: dict[str, tuple[yaml.Node, Any]] = {}
        for key_node, value_node in node.value:
            key = self.value(key_node)
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise self.error(key_node, f"{what}: unknown key {key!r}{hint}; allowed keys: {', '.join(allowed)}")
            if key in out:
                raise self.error(key_node, f"{what}: key {key!r} is given twice")
            out[key] = (value_node, self.value(value_node))
        return out


def _parse_rule(where: _Where, node: yaml.Node, index: int) -> Rule:
    label = f"rules[{index}]"
    fields = where.mapping(node, label, RULE_KEYS)
    for key in ("bundle", "runtime", "batch_size"):
        if key not in fields:
            raise where.error(node, f"{label}: missing required key {key!r}")
    if not any(k in fields for k in METRICS):
        raise where.error(node, f"{label}: no budget given; set at least one of {', '.join(METRICS)}")
    for key, (value_node, value) in fields.items():
        problem = _budget_problem(key, value) if key in METRICS else _field_problem(key, value)  # null budget: error
        if problem:
            raise where.error(value_node, f"{label}.{key} {problem}")
    try:
        return Rule(**{k: v for k, (_, v) in fields.items()})
    except BudgetError as exc:  # not expected after the checks above; keep the line anyway
        raise where.error(node, f"{label}: {exc}") from None


def parse_budgets(text: str, source: str = "<budgets>") -> Budgets:
    """Parse and validate the YAML text of a budgets file.

    Args:
        text: the YAML document.
        source: the file name used in messages.

    Raises:
        BudgetError: invalid YAML, an unknown or repeated key (the allowed keys are listed), a
            missing target key, a rule without budgets, a bad value (negative budget, unknown
            runtime, ...), a bad confidence or duplicate rule names; ``source:line:`` first.
    """
    where = _Where(source)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f"{mark.line + 1}:" if mark else ""
        raise BudgetError(f"{source}:{line} not valid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise BudgetError(f"{source}: not valid YAML: {exc}") from None
    if root is None:
        raise BudgetError(f"{source}: the file is empty; expected a mapping with keys {', '.join(TOP_KEYS)}")
    top = where.mapping(root, "the top level", TOP_KEYS)
    confidence = _optional_setting(where, top, "confidence", DEFAULT_CONFIDENCE, _confidence_problem)
    decision = _optional_setting(where, top, "decision", DEFAULT_DECISION, _decision_problem)
    if "rules" not in top:
        raise where.error(root, "missing required key 'rules' (a list of rules)")
    rules_node, _ = top["rules"]
    if not isinstance(rules_node, yaml.SequenceNode) or not rules_node.value:
        raise where.error(rules_node, "rules must be a non-empty list of rules")
    rules = [_parse_rule(where, node, i) for i, node in enumerate(rules_node.value)]
    names: dict[str, int] = {}
    for i, (rule, node) in enumerate(zip(rules, rules_node.value)):
        if rule.name in names:
            raise where.error(node, f"rules[{i}]: name {rule.name!r} is already used by rules[{names[rule.name]}]; "
                                    "give the rules distinct names")
        names[rule.name] = i
    return Budgets(tuple(rules), confidence, source, decision)


def load_budgets(path: str | Path) -> Budgets:
    """Read and validate a budgets file (see the module docstring for the format).

    Raises:
        BudgetError: the file does not exist or is invalid (see :func:`parse_budgets`).
    """
    path = Path(path)
    if not path.is_file():
        raise BudgetError(f"budgets file {path} does not exist")
    return parse_budgets(path.read_text(encoding="utf-8"), str(path))
