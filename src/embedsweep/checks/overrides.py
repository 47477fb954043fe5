"""Hydra's composition errors as one line that leads to the fix: an unknown key gets "did you mean"
from the keys of the composed config, an unknown group option names the group's options.

Hydra's own texts point elsewhere: `trainer.lrr=1e-4` gets "To append to your config use
+trainer.lrr=1e-4" (which then fails the schema), and `loss=mnrr` gets a list on many lines
followed by the config search path.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from pathlib import Path

from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import DictConfig, OmegaConf

from embedsweep.errors import UserError

_UNKNOWN_KEY = re.compile(r"Could not (?:override|delete from config\.) '([^']+)'")
# Set by the sweepers for each job, never by hand: not offered as suggestions.
INTERNAL_KEYS = ("sweep", "trial")


def config_keys(cfg: DictConfig) -> list[str]:
    """Every dotted key of a composed config (nodes and leaves), Hydra's own node left out."""
    found: list[str] = []

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                path = f"{prefix}{key}"
                found.append(path)
                walk(value, f"{path}.")

    container = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
    walk({k: v for k, v in container.items() if k not in ("hydra", *INTERNAL_KEYS)}, "")
    return found


def unknown_key(key: str, cfg: DictConfig) -> str:
    """`trainer.lrr is not a key of the config; did you mean trainer.lr? (keys of trainer: epochs, ...)`"""
    parent, _, _ = key.rpartition(".")
    keys = [k for k in config_keys(cfg) if k != key and not key.startswith(f"{k}.")]  # `trainer` is no fix for `trainer.zzz`
    siblings = [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == parent]
    # A key beside it first (`trainer.lrr`: trainer.lr), then one elsewhere (`trainr.lr`: trainer.lr); the
    # shared prefix would otherwise make any sibling look close (`trainer.zzz`: trainer.lr).
    close = [f"{parent}.{c}" if parent else c for c in difflib.get_close_matches(key.rpartition(".")[2], siblings, n=1)]
    close = close or difflib.get_close_matches(key, [k for k in keys if k.rpartition(".")[0] != parent], n=1)
    text = f"{key} is not a key of the config"
    if close:
        text += f"; did you mean {close[0]}?"
    where = f"keys of {parent}" if parent else "top-level keys"
    return f"{text} ({where}: {', '.join(siblings)})" if siblings else text


def unknown_option(group: str, option: str, options: Sequence[str]) -> str:
    """`loss=mnrr is not an option of the loss group; did you mean loss=mnr? (options: angle, ...)`"""
    close = difflib.get_close_matches(option, list(options), n=1)
    hint = f"; did you mean {group}={close[0]}?" if close else ""
    return f"{group}={option} is not an option of the {group} group{hint} (options: {', '.join(options)})"


_OPTUNA_ARGUMENT = re.compile(r"^hydra\.sweeper\.(sampler|pruner)\.")


def unknown_argument(key: str, kind: str, config_dir: str) -> str:
    """`hydra.sweeper.pruner.name=none` (the spelling before samplers and pruners were `_target_`
    configs) or an argument the chosen preset does not list: how to pick another or add one."""
    from pathlib import Path

    options = sorted(p.stem for p in Path(config_dir, "hydra", "sweeper", kind).glob("*.yaml"))
    return (f"{key} is not an argument of the chosen {kind} preset; pick another with hydra/sweeper/{kind}=<name> "
            f"(options: {', '.join(options)}), or give its Optuna class an argument the preset does not list with +{key}=...")  # fmt: skip


def explain(exc: BaseException, overrides: Sequence[str], config_dir: str, config_name: str) -> str | None:
    """One line for a composition error that Hydra explains on several lines or points to the wrong fix;
    None for any other error. `overrides` are the command line's: the config is composed again without
    the one that failed, to suggest the keys it has."""
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and exc.options:
        group, _, option = exc.missing_cfg_file.rpartition("/")
        if group:
            return unknown_option(group, option, exc.options)
    if isinstance(exc, ConfigCompositionException) and (found := _UNKNOWN_KEY.search(str(exc))):
        key = found.group(1)
        if (argument := _OPTUNA_ARGUMENT.match(key)) is not None:
            return unknown_argument(key, argument.group(1), config_dir)
        cfg = _compose_without(key, overrides, config_dir, config_name)
        return unknown_key(key, cfg) if cfg is not None else f"{key} is not a key of the config"
    return None


def _compose_without(key: str, overrides: Sequence[str], config_dir: str, config_name: str) -> DictConfig | None:
    """The config the command would have composed, without the override of `key` and without sweeps
    (a multirun composes its shared config without them too); None if that fails as well."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
        kept = [o.input_line for o in parsed if o.key_or_group != key and not o.is_sweep_override()]
        GlobalHydra.instance().clear()  # the failed command's instance
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            return compose(config_name, overrides=kept)
    except Exception:  # noqa: BLE001 - the suggestion is a help, the error line goes out without it
        return None


def check_swept(config: DictConfig) -> None:
    """Every option a multirun sweeps over a config group exists, and every key it sweeps is a key of the
    config: checked before the sweep's parent run is opened, so `loss=mnr,mnrr` or `trainer.lrr=1,2`
    fails at once instead of in each job (leaving a parent run with no children). Hydra composes a
    multirun's shared config without its sweeps, so it cannot refuse them itself. Needs Hydra's
    instance of the running command (a callback's)."""
    from hydra.core.global_hydra import GlobalHydra

    from embedsweep.checks.config import typed_section
    from embedsweep.swept import key_of, parse

    loader = GlobalHydra.instance().config_loader()
    swept = [o for o in parse(list(config.hydra.overrides.get("task", [])), config.hydra.sweeper.get("params") or {}) if o.is_sweep_override()]
    # With the command's hydra overrides: `hydra.searchpath=[...]` adds folders of options of its own.
    name, extra = config.hydra.job.get("config_name"), list(config.hydra.overrides.get("hydra", []))
    groups = {key_of(o): loader.get_group_options(key_of(o), config_name=name, overrides=extra) for o in swept}  # [] for a key that is not a group
    for o in swept:
        key = key_of(o)
        for value in o.sweep_string_iterator() if groups[key] and o.is_discrete_sweep() else ():
            if value not in groups[key]:
                raise UserError(unknown_option(key, value, groups[key]))
    # A key may come with a swept option (`loss=mnr,cached_mnr loss.module.mini_batch_size=8,16`; an
    # experiment preset sets keys anywhere): those are left to each job.
    if any(options and _sets_any_key(key, options) for key, options in groups.items()):
        return
    for o in swept:
        key = key_of(o)
        if groups[key] or any(key.startswith(f"{group}.") for group, options in groups.items() if options):
            continue
        if OmegaConf.select(config, key, default=_ABSENT) is _ABSENT and not (
            (o.is_add() or o.is_force_add()) and not typed_section(key)  # `+new.key=1,2` adds a key, unless a schema forbids it
        ):
            raise UserError(unknown_key(key, config))


_ABSENT = object()


def _sets_any_key(group: str, options: Sequence[str]) -> bool:
    """Whether an option of `group` is a global preset (`# @package _global_`: experiment, hparams_search)."""
    from embedsweep.checks.config import config_dir

    folder = Path(config_dir(), group)
    return any("@package _global_" in (folder / f"{o}.yaml").read_text()[:500] for o in options if (folder / f"{o}.yaml").is_file())
