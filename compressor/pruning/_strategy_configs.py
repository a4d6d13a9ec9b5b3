"""What a pruning strategy takes and how it is found: one frozen config class per strategy, and
the strategy registry, keyed by name, that records each strategy's function and config class.

:class:`StrategyConfig` holds the options every strategy has; each strategy's config subclasses
it, and the class of the config given to :func:`compressor.pruning.run_strategy` selects the
strategy. A user strategy brings its own config: ``@register_strategy("mine", MyConfig)``.

The CLI's ``--strategy-option KEY=VALUE`` and the pipeline YAML's ``strategy: {name: ..., KEY: VALUE}``
write a strategy's options as flat keys: the field names, with the prefixed keys of the single
config these classes replaced (``psfp_d``, ``ab_alpha``, ``pp_fraction``, ``pp_lambda``,
``pp_delta``) for the fields they name. :func:`strategy_config_from_dict` maps them, and a recipe
records a strategy in that same flat format. The strategies themselves are in ``_strategies``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from compressor.common.config import Check, JsonConfig, check_keys, int_at_least, number_where
from compressor.common.registry import Registry, UnknownNameError

Strategy = Callable[[Any], Any]  # fn(run: _strategies._Run) -> the pruned nn.Module


def option(default: Any, check: Check | None = None, *, flat: str | None = None) -> Any:
    """A strategy config field: its default, its check, and its key among the flat strategy options
    (CLI ``--strategy-option``, pipeline YAML, recipe) where that is not the field's name."""
    return field(default=default, metadata={"check": check, "flat": flat})


@dataclass(frozen=True, kw_only=True)
class StrategyConfig(JsonConfig):
    """The options every strategy has; each strategy's own config subclasses it, and its class
    selects the strategy (:func:`register_strategy`). Epoch counts are training epochs over the data.

    * ``finetune_epochs``: fine-tuning after the final removal.
    * ``bn_recalibration``: after every physical removal, re-estimate the BatchNorm running
      statistics on this many training batches (forward passes only, no weight update). The
      layers after a removal see different inputs, and stale statistics alone can take a pruned
      ResNet to chance accuracy; 0 turns it off.

    These two are keyword-only, so a subclass's own fields come first: ``PSFPConfig(10, 0.125)``.
    Fields declared with :func:`option` are checked on construction (ValueError naming the field).
    """

    finetune_epochs: int = option(0, int_at_least(0))
    bn_recalibration: int = option(8, int_at_least(0))

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check, value = f.metadata.get("check"), getattr(self, f.name)
            if check is not None and not check[0](value):
                alias = f" ({f.metadata['flat']})" if f.metadata.get("flat") else ""
                raise ValueError(f"{type(self).__name__} option {f.name}{alias} must be {check[1]}, got {value!r}")

    @property
    def name(self) -> str:
        """The registered strategy this config selects."""
        return _spec_of(self).name


@dataclass(frozen=True)
class OneShotConfig(StrategyConfig):
    """``oneshot``: rank once, prune to the target, fine-tune ("Exploiting prunability" Alg. 1)."""


@dataclass(frozen=True)
class IterativeConfig(StrategyConfig):
    """``iterative``: rank -> remove ``step`` of the target -> retrain, until the target is met.

    * ``step``: the share of the target removed per iteration (of the channels for
      ``ratio``/``global_ratio``, of the FLOPs or params for the cost targets);
    * ``rank_epochs``: epochs of data feeding a data-based criterion's ranking;
    * ``retrain_epochs``: training after each removal.
    """

    step: float = option(0.05, number_where(lambda v: 0 < v <= 1, "in (0, 1]"))
    rank_epochs: int = option(1, int_at_least(0))
    retrain_epochs: int = option(4, int_at_least(0))


@dataclass(frozen=True)
class PSFPConfig(StrategyConfig):
    """``psfp``: ``epochs`` of training with soft pruning; ``d`` is D of the schedule
    ``P'_{D T} = 3P/4`` ("Exploiting prunability" eq. 11-12; flat option ``psfp_d``)."""

    epochs: int = option(10, int_at_least(1))
    d: float = option(0.125, number_where(lambda v: 0 < v < 0.75, "in (0, 0.75)"), flat="psfp_d")


@dataclass(frozen=True)
class AutoBalanceConfig(StrategyConfig):
    """``autobalance``: ``epochs`` of training with the balanced regulariser; ``alpha`` is alpha of
    "Exploiting prunability" eq. 9 (flat option ``ab_alpha``)."""

    epochs: int = option(10, int_at_least(1))
    alpha: float = option(1e-4, number_where(lambda v: v > 0, "> 0"), flat="ab_alpha")


@dataclass(frozen=True)
class PlayAndPruneConfig(StrategyConfig):
    """``play_and_prune``: ``epochs`` of training with the AFP penalty ("Exploiting prunability" eq. 18-23).

    * ``fraction``: alpha of eq. 18, the share of a layer's live filters under the L1 penalty (``pp_fraction``);
    * ``lambda_``: the initial penalty lambda of eq. 23 (``pp_lambda``);
    * ``delta``: the threshold factor delta_w of eq. 21 (``pp_delta``);
    * ``tolerance``: the accuracy tolerance epsilon, a fraction: 0.01 = one point.
    """

    epochs: int = option(10, int_at_least(1))
    fraction: float = option(0.1, number_where(lambda v: 0 < v < 1, "in (0, 1)"), flat="pp_fraction")
    lambda_: float = option(1e-3, number_where(lambda v: v >= 0, ">= 0"), flat="pp_lambda")
    delta: float = option(1.5, number_where(lambda v: v > 1, "> 1"), flat="pp_delta")
    tolerance: float = option(0.01, number_where(lambda v: v >= 0, ">= 0 (an accuracy drop, as a fraction)"))


_SOFT = (PSFPConfig, AutoBalanceConfig, PlayAndPruneConfig)  # re-rank by weight while training, remove at the end
_BUILT_IN = (OneShotConfig, IterativeConfig, *_SOFT)


# ---- the strategy registry and the flat options ------------------------------------------------


@dataclass(frozen=True)
class StrategySpec:
    """A registered strategy: ``fn(run) -> pruned model`` and the config class that selects it."""

    name: str
    fn: Strategy
    config: type[StrategyConfig]


_STRATEGIES: Registry[StrategySpec] = Registry("strategy", "strategies")


def register_strategy(name: str, config: type[StrategyConfig]) -> Callable[[Strategy], Strategy]:
    """Register ``fn(run) -> pruned model`` as strategy ``name``, selected by instances of ``config``.

    ``config`` is the strategy's own frozen dataclass, subclassing :class:`StrategyConfig`; the
    function reads the instance given to :func:`run_strategy` as ``run.strategy``.

    Raises:
        TypeError: ``config`` is not a StrategyConfig subclass.
        ValueError: ``name`` is already registered, or ``config`` already selects another strategy.
    """
    register = _STRATEGIES.register(name)  # checks the name now, and again when applied
    if not (isinstance(config, type) and issubclass(config, StrategyConfig)):
        raise TypeError(f"register_strategy({name!r}, config): config must be a StrategyConfig subclass, "
                        f"got {config!r}")
    taken = [spec.name for spec in _STRATEGIES.values() if spec.config is config]
    if taken:
        raise ValueError(f"{config.__name__} already selects strategy {taken[0]!r}; give each strategy its own config")

    def deco(fn: Strategy) -> Strategy:
        register(StrategySpec(name, fn, config))
        return fn

    return deco


def list_strategies() -> list[str]:
    """The registered strategy names, sorted."""
    return _STRATEGIES.names()


def get_strategy(name: str) -> Strategy:
    """The function of strategy ``name``; an unknown name is a ValueError listing the known ones."""
    return _STRATEGIES.get(name).fn


def _spec_of(config: StrategyConfig) -> StrategySpec:
    for spec in _STRATEGIES.values():
        if type(config) is spec.config:
            return spec
    known = ", ".join(f"{spec.config.__name__} ({spec.name})" for spec in _STRATEGIES.values())
    raise UnknownNameError(f"{type(config).__name__} is not the config of a registered strategy; known: {known}")


def _flat_keys(config: type[StrategyConfig]) -> dict[str, str]:
    """Flat option key -> field name of ``config``'s fields."""
    return {f.metadata.get("flat") or f.name: f.name for f in dataclasses.fields(config)}


def strategy_config_from_dict(name: str, options: dict[str, Any] | None = None) -> StrategyConfig:
    """The config of strategy ``name`` from flat options, the keys the CLI's ``--strategy-option``
    and the pipeline YAML's ``strategy:`` mapping take: the field names, except ``psfp_d``,
    ``ab_alpha``, ``pp_fraction``, ``pp_lambda`` and ``pp_delta`` for the prefixed ones.

    Raises:
        ValueError: an unknown strategy (the known ones are listed), an option the strategy does
            not take (named, with the strategy and its allowed keys), or a bad value.
    """
    config = _STRATEGIES.get(name).config
    keys = _flat_keys(config)
    check_keys(options or {}, keys, "option", f"strategy {name!r}")
    return config(**{keys[k]: v for k, v in (options or {}).items()})


# A recipe records a strategy in the flat format of the one StrategyConfig the classes above
# replaced: the name, then every built-in option in this order, at its default where the
# strategy has no such option. Recipes and results.json files of every version compare key by key.
_RECORD_DEFAULTS: dict[str, Any] = {
    "name": "oneshot", "finetune_epochs": 0, "step": 0.05, "rank_epochs": 1, "retrain_epochs": 4, "epochs": 10,
    "psfp_d": 0.125, "ab_alpha": 1e-4, "pp_fraction": 0.1, "pp_lambda": 1e-3, "pp_delta": 1.5, "tolerance": 0.01,
    "bn_recalibration": 8,
}


def _record(config: StrategyConfig) -> dict[str, Any]:
    """The strategy as a recipe records it: its name and its flat options (see above)."""
    fields = config.to_dict()
    record = {"name": config.name, **{key: fields[name] for key, name in _flat_keys(type(config)).items()}}
    return {**_RECORD_DEFAULTS, **record} if type(config) in _BUILT_IN else record
