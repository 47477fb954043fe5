"""What a multirun varies: the command line's overrides and a sweeper's `params`, parsed in one place
by Hydra's own OverridesParser, for every module that needs to know (the preflight's checks, run names
and the `sweep.swept` of each job, the console's job count).

A key given both in `params` and on the command line takes the command line's value, as Hydra's basic
sweeper and the Optuna sweeper do. May import: hydra, the standard library.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hydra.core.override_parser.types import Override
    from omegaconf import DictConfig


def parse(overrides: Sequence[str], params: Mapping[str, Any] | None = None) -> list[Override]:
    """`params` (`key: choice(...)`) then the command line's overrides, parsed, in that order."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in (params or {}).items()] + list(overrides))


def key_of(override: Override) -> str:
    """The key an override sets, without `+`/`~` (`+trainer.seed=1,2` sets trainer.seed)."""
    return override.get_key_element().lstrip("+~")


def swept_values(overrides: Sequence[str], params: Mapping[str, Any] | None = None) -> dict[str, list[str] | None]:
    """Each key a multirun varies, the command line's first, with the values it takes where they can
    be listed (`loss=cosine,cosent`, `choice(8,16)`, `range(1,3)`) as written; None for an
    `interval(...)`. A key that the command line fixes (`batch=32` over a swept `params.batch`) is not swept."""
    parsed = parse(overrides, params)
    from_params, from_line = parsed[: len(params or {})], parsed[len(params or {}) :]
    by_key: dict[str, Override] = {key_of(o): o for o in from_line}
    for o in from_params:
        by_key.setdefault(key_of(o), o)
    return {
        key: list(o.sweep_string_iterator()) if o.is_discrete_sweep() else None
        for key, o in by_key.items()
        if o.is_sweep_override()
    }


def swept_values_of(config: DictConfig) -> dict[str, list[str] | None]:
    """`swept_values` for a composed multirun config: its task overrides and its sweeper's params."""
    return swept_values(list(config.hydra.overrides.get("task", [])), config.hydra.sweeper.get("params") or {})
