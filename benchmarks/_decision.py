"""The one decision rule that says whether a noisy measurement meets a budget.

The release gate (:mod:`._gate`) and latency-budget pruning (:mod:`compressor.app._latency_prune`) both call
:func:`decide`. A measurement is a point estimate and, for timed metrics, a two-sided confidence
interval; the rule says which of them must be within the budget:

``point`` (the default): the estimate (median, percentile, ratio ...) must be within the budget.
``strict``: the *conservative* end of the interval must be within it: the upper bound for a
    maximum ("at most 10 ms"), the lower bound for a minimum ("at least 1.3x"). A pass then holds
    at the interval's confidence. Latency-budget pruning uses it, so that a lucky timing cannot
    pick a model that is too slow.
``lenient``: fails only when the whole interval is beyond the budget (the optimistic end is
    over a maximum or under a minimum), i.e. a violation is shown at the interval's confidence.

Without an interval (memory, accuracy) every rule compares the value itself. The estimate must be
within the budget under ``strict`` as well, and is enough under ``lenient``, so that an interval
that does not contain its estimate (a percentile bootstrap can) never makes ``strict`` laxer than
``point`` or ``lenient`` stricter.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DECISIONS", "DEFAULT_DECISION", "Decision", "check_decision", "decide"]

DECISIONS = ("point", "strict", "lenient")
DEFAULT_DECISION = "point"
DIRECTIONS = ("max", "min")


def check_decision(rule: object) -> str:
    """``rule`` if it is one of :data:`DECISIONS`; else ``ValueError`` listing them."""
    if rule not in DECISIONS:
        raise ValueError(f"decision rule must be one of {', '.join(DECISIONS)}, got {rule!r}")
    return rule  # type: ignore[return-value]


@dataclass(frozen=True)
class Decision:
    """The verdict of one measurement against one budget.

    Attributes:
        within: the measurement meets the budget under the rule.
        margin: headroom of the value the rule compared, in the metric's unit; >= 0 exactly when
            ``within``: ``budget - value`` for a maximum, ``value - budget`` for a minimum.
        compared: what the rule compared: ``"estimate"``, ``"upper bound"`` or ``"lower bound"``.
        budget_in_interval: the budget lies strictly inside the interval, so the rules can
            disagree (the measurement is too noisy to settle it at this confidence).
    """

    within: bool
    margin: float
    compared: str
    budget_in_interval: bool


def decide(estimate: float, interval: tuple[float, float] | None, budget: float, *, direction: str,
           rule: str = DEFAULT_DECISION) -> Decision:
    """Apply decision ``rule`` (see the module docstring) to one measurement.

    Args:
        estimate: the point estimate, in the budget's unit.
        interval: ``(low, high)`` two-sided confidence interval, or None for an exact value.
        budget: the limit.
        direction: ``"max"`` (the value must stay at or below the budget) or ``"min"``.
        rule: ``"point"``, ``"strict"`` or ``"lenient"``.

    Raises:
        ValueError: an unknown rule or direction, or an interval whose low end is above its high end.
    """
    check_decision(rule)
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    if interval is not None and interval[0] > interval[1]:
        raise ValueError(f"interval must be (low, high) with low <= high, got {tuple(interval)}")
    sign = 1.0 if direction == "max" else -1.0

    def headroom(value: float) -> float:
        return sign * (budget - value)

    point = headroom(estimate)
    if interval is None or rule == "point":
        margin, compared = point, "estimate"
    else:
        low, high = interval
        # the end that is worse for the budget: high for a maximum, low for a minimum
        worse, better = (high, low) if direction == "max" else (low, high)
        if rule == "strict":
            margin = min(point, headroom(worse))
            compared = "estimate" if margin == point else ("upper bound" if direction == "max" else "lower bound")
        else:
            margin = max(point, headroom(better))
            compared = "estimate" if margin == point else ("lower bound" if direction == "max" else "upper bound")
    inside = interval is not None and interval[0] < budget < interval[1]
    return Decision(margin >= 0, margin, compared, inside)
