"""Which study a sweep adds its trials to, and what a new study starts from.

A study is one search on one version of the data. The search is the space (the parsed
distributions), the objective(s) and direction(s), and the settings around them that change what a
trial measures (the config-group choices and fixed command-line overrides: model, loss, trainer
settings); the data version is the fingerprints of the training and eval sets, the same ones every
run records (embedsweep.run.data.data_version). Both are stored with the study as user attributes
when it is created, so that a later sweep can tell whether it belongs there:

- without `study_name`, the name is made from both, `<hparams_search or "search">-<search hash>-data-<data hash>`:
  another search, or the same search on new data, gets another study;
- with `study_name`, a study that searches another space or objective is refused in one line
  naming the differences, and one measured on other data is refused, continued in a study of its
  own (`on_new_data=new_study`) or joined anyway (`on_new_data=mix`);
- a new study may begin with the best trials of an earlier one (`warm_start`), enqueued as its first
  trials; values outside the new space are dropped, with a line that names them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import optuna
from omegaconf import DictConfig
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.distributions import distribution_to_json, json_to_distribution
from optuna.trial import TrialState

from embedsweep.errors import UserError

log = logging.getLogger(__name__)

ON_NEW_DATA = ("refuse", "new_study", "mix")
# The study's user attributes this module writes and reads.
SEARCH, SEARCH_ID, DATA, DATA_ID, CREATED = "search", "search_id", "data", "data_version", "created"
# Config groups and override prefixes that do not change what a trial measures (where runs are
# recorded, how jobs are launched, who is notified, the test set, which only the winner sees), or
# that the data version covers already (data, eval): left out of the search's identity, so that
# e.g. a schedule that adds notify=webhook some nights keeps its study.
NOT_SEARCH_GROUPS = ("data", "eval", "test", "tracking", "paths", "launcher", "hparams_search", "notify")
NOT_SEARCH_KEYS = ("hydra", "paths", "tracking", "data", "eval", "test", "sweep", "trial", "promote", "verbose", "notify", "allow_test_overlap")


def check_options(study_name: str | None, on_new_data: str, warm_start: Any) -> None:
    """The options of this module, checked with the sweeper's others: one line naming the key and what is allowed."""
    from hydra.errors import HydraException

    def refuse(key: str, value: Any, allowed: str) -> None:
        raise HydraException(f"hydra.sweeper.{key}={value} is not allowed: must be {allowed}")

    if study_name is not None and not str(study_name).strip():
        refuse("study_name", repr(study_name), "null (a name made from the search and the data) or a non-empty name")
    if on_new_data not in ON_NEW_DATA:
        refuse("on_new_data", on_new_data, f"one of {', '.join(ON_NEW_DATA)}")
    if warm_start is not None and warm_start.top_k < 1:
        refuse("warm_start.top_k", warm_start.top_k, "a whole number >= 1")
    if warm_start is not None and warm_start.from_study is not None and not str(warm_start.from_study).strip():
        refuse("warm_start.from_study", repr(warm_start.from_study), "auto, the name of a study in the storage, or null")


def short_hash(value: Any) -> str:
    """8 hex digits of a JSON-able value, the same on every machine and Python run."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Identity:
    """What a study is: its search and the data version it is measured on."""

    space: dict[str, str]  # swept key -> its distribution as Optuna's JSON
    objectives: list[str]
    directions: list[str]
    settings: dict[str, str]  # group choices and fixed overrides around the space
    data: dict[str, str]  # train / eval -> content fingerprint

    @classmethod
    def of(cls, distributions: Mapping[str, BaseDistribution], objectives: Sequence[str], directions: Sequence[str],
           settings: Mapping[str, str], data: Mapping[str, str]) -> Identity:  # fmt: skip
        space = {key: distribution_to_json(dist) for key, dist in distributions.items()}
        return cls(space, list(objectives), list(directions), dict(settings), dict(data))

    @property
    def search(self) -> dict[str, Any]:
        return {"space": self.space, "objectives": self.objectives, "directions": self.directions, "settings": self.settings}

    @property
    def search_id(self) -> str:
        return short_hash(self.search)

    @property
    def data_id(self) -> str:
        return short_hash(self.data)

    def attrs(self) -> dict[str, Any]:
        return {SEARCH: self.search, SEARCH_ID: self.search_id, DATA: self.data, DATA_ID: self.data_id}

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Identity | None:
        """The identity a study recorded when it was created; None for a study made before studies recorded one."""
        search, data = attrs.get(SEARCH), attrs.get(DATA)
        if not isinstance(search, dict) or not isinstance(data, dict):
            return None
        return cls(dict(search["space"]), list(search["objectives"]), list(search["directions"]), dict(search.get("settings", {})), dict(data))

    def name(self, prefix: str) -> str:
        """The study name made from this identity (no study_name given)."""
        return f"{prefix}-{self.search_id}-data-{self.data_id}"


def settings_of(config: DictConfig, distributions: Mapping[str, BaseDistribution], fixed: Sequence[str]) -> dict[str, str]:
    """The choices and fixed overrides that, with the space, say what a trial measures: `model=tiny` and
    `model=minilm` over the same space are two searches. Keys the space sweeps are left out."""
    choices = config.hydra.runtime.choices if "hydra" in config else {}
    settings = {
        str(group): str(choice) for group, choice in choices.items()
        if choice is not None and not str(group).startswith("hydra/") and group not in NOT_SEARCH_GROUPS and group not in distributions
    }  # fmt: skip
    for override in fixed:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key.split(".")[0] in NOT_SEARCH_KEYS or key in distributions or key in NOT_SEARCH_GROUPS:
            continue
        settings[key] = value
    return dict(sorted(settings.items()))


# ---------------------------------------------------------------- words


def describe(key: str, dist: BaseDistribution | str) -> str:
    """`trainer.lr in [1e-05, 0.0001] (log)`, `batch in choice(16, 32)`: a dimension as a person reads it."""
    dist = json_to_distribution(dist) if isinstance(dist, str) else dist
    if isinstance(dist, CategoricalDistribution):
        return f"{key} in choice({', '.join(map(str, dist.choices))})"
    assert isinstance(dist, (FloatDistribution, IntDistribution))
    extra = [word for word, on in (("log", dist.log), (f"step {dist.step}", dist.step not in (None, 1))) if on]
    return f"{key} in [{dist.low:g}, {dist.high:g}]" + (f" ({', '.join(extra)})" if extra else "")


def search_differences(study_name: str, old: Identity, new: Identity) -> str | None:
    """One line naming how the study's search differs from this sweep's, or None when they match
    (space, objectives and directions; the settings are part of a made name, not of this check)."""
    parts = []
    if old.space != new.space:
        keys = [k for k in dict.fromkeys([*old.space, *new.space]) if old.space.get(k) != new.space.get(k)]
        theirs = ", ".join(describe(k, old.space[k]) for k in keys if k in old.space)
        ours = ", ".join(describe(k, new.space[k]) for k in keys if k in new.space)
        if theirs and ours:
            parts.append(f"study {study_name!r} searches {theirs}; this sweep searches {ours}")
        elif theirs:
            parts.append(f"study {study_name!r} also searches {theirs}; this sweep does not")
        else:
            parts.append(f"this sweep also searches {ours}; study {study_name!r} does not")
    if (old.objectives, old.directions) != (new.objectives, new.directions):
        def goal(i: Identity) -> str:
            return ", ".join(f"{d}s {o}" for o, d in zip(i.objectives, i.directions))

        parts.append(f"study {study_name!r} {goal(old)}; this sweep {goal(new)}")
    if not parts:
        return None
    return "; ".join(parts) + ": use another hydra.sweeper.study_name or leave it unset (a name is then made from the search)"


def data_changes(old: Identity, new: Identity) -> str:
    """`train changed (1a2b3c4d... -> 5e6f...)`: which sets differ between two data versions."""
    changed = [f"{key} changed ({old.data.get(key)} -> {new.data.get(key)})" for key in dict.fromkeys([*old.data, *new.data]) if old.data.get(key) != new.data.get(key)]
    return " and ".join(changed) or "no set changed"


# ---------------------------------------------------------------- which study


def _summaries(storage: optuna.storages.BaseStorage) -> list[optuna.study.StudySummary]:
    return optuna.study.get_all_study_summaries(storage, include_best_trial=False)


def _recorded(storage: optuna.storages.BaseStorage, name: str) -> tuple[bool, Identity | None]:
    """Whether a study of that name exists, and the identity it recorded."""
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return False, None
    return True, Identity.from_attrs(storage.get_study_user_attrs(study_id))


def choose_study(storage: optuna.storages.BaseStorage, study_name: str | None, on_new_data: str, identity: Identity, prefix: str) -> str:
    """The name of the study this sweep adds its trials to; raises UserError where it must not add any.
    Logs a line where data moved the sweep to another study, or where it is knowingly mixed."""
    if study_name is None:
        name = identity.name(prefix)
        exists, _ = _recorded(storage, name)
        if not exists:
            earlier = [s for s in _summaries(storage) if s.user_attrs.get(SEARCH_ID) == identity.search_id and s.study_name != name]
            if earlier:
                last = max(earlier, key=_created)
                before = Identity.from_attrs(last.user_attrs)
                assert before is not None
                log.info("new study %r for this data: study %r holds the same search on other data (%s)", name, last.study_name, data_changes(before, identity))
        return name
    exists, old = _recorded(storage, study_name)
    if not exists or old is None:  # a new study, or one made before studies recorded their search: it takes this one
        return study_name
    if (difference := search_differences(study_name, old, identity)) is not None:
        raise UserError(difference)
    if old.data_id == identity.data_id:
        return study_name
    changed = data_changes(old, identity)
    if on_new_data == "mix":
        log.warning("study %r holds trials on other data (%s); adding this sweep's trials to it anyway (hydra.sweeper.on_new_data=mix)", study_name, changed)
        return study_name
    if on_new_data == "refuse":
        raise UserError(
            f"study {study_name!r} holds trials on other data ({changed}): its trials and this sweep's would not be comparable; "
            f"hydra.sweeper.on_new_data=new_study starts a study for this data, =mix adds to it anyway"
        )
    new_name = f"{study_name}-data-{identity.data_id}"
    exists, new_old = _recorded(storage, new_name)
    if exists and new_old is not None and (difference := search_differences(new_name, new_old, identity)) is not None:
        raise UserError(difference)
    verb = "continues" if exists else "starts"
    log.info("data changed since study %r (%s): this sweep %s study %r for the new data (hydra.sweeper.on_new_data=new_study)", study_name, changed, verb, new_name)
    return new_name


def _created(summary: optuna.study.StudySummary) -> str:
    recorded = summary.user_attrs.get(CREATED)
    started = summary.datetime_start.astimezone(timezone.utc).isoformat() if summary.datetime_start else ""
    return str(recorded or started)


def record(study: optuna.Study, identity: Identity) -> None:
    """Store the identity with a study that has none yet (a new one; or one made before studies recorded it)."""
    if Identity.from_attrs(study.user_attrs) is not None:
        return
    if study.get_trials(deepcopy=False):
        log.info("study %r was made before studies recorded their search and data: it records this sweep's from now on", study.study_name)
    for key, value in identity.attrs().items():
        study.set_user_attr(key, value)
    study.set_user_attr(CREATED, datetime.now(timezone.utc).isoformat())


# ---------------------------------------------------------------- warm start


def warm_source(storage: optuna.storages.BaseStorage, source: str, identity: Identity, study_name: str, storage_name: str) -> str | None:
    """The study whose best trials a new study begins with: `auto` (the most recent study of the same
    search on another data version), or a named one, which must exist."""
    if source == "auto":
        earlier = [
            s for s in _summaries(storage)
            if s.study_name != study_name and s.user_attrs.get(SEARCH_ID) == identity.search_id and s.user_attrs.get(DATA_ID) != identity.data_id
        ]  # fmt: skip
        return max(earlier, key=_created).study_name if earlier else None
    if not _recorded(storage, source)[0]:
        names = sorted(s.study_name for s in _summaries(storage))
        shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "") if names else "none"
        raise UserError(
            f"hydra.sweeper.warm_start.from_study={source!r}: no such study in {storage_name} (studies there: {shown}); "
            f"allowed: auto, the name of a study there, or null"
        )
    return source


def contains(dist: BaseDistribution, value: Any) -> bool:
    """Whether a value lies in a distribution (Optuna's check, which wants its internal representation)."""
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False


def warm_start(study: optuna.Study, storage: optuna.storages.BaseStorage, source: str, top_k: int, distributions: Mapping[str, BaseDistribution]) -> list[int]:
    """Enqueue the top `top_k` finished trials of study `source` as the first trials of `study`, each
    with the values that lie in this sweep's space (the sampler picks the rest). Returns their numbers
    in the source study, best first."""
    if len(study.directions) != 1:
        log.info("warm start skipped: a multi-objective study has no single best trials to start from")
        return []
    earlier = optuna.load_study(study_name=source, storage=storage)
    if len(earlier.directions) != 1:
        log.info("warm start skipped: study %r is multi-objective, it has no single best trials", source)
        return []
    maximize = earlier.direction == optuna.study.StudyDirection.MAXIMIZE
    finished = earlier.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = sorted(finished, key=lambda t: -t.value if maximize else t.value)[:top_k]
    if not best:
        log.info("warm start: study %r has no completed trial; this study starts cold", source)
        return []
    dropped: list[str] = []
    for trial in best:
        params = {}
        for key, value in trial.params.items():
            if key not in distributions:
                dropped.append(f"{key}={value} (trial {trial.number}; not searched here)")
            elif not contains(distributions[key], value):
                dropped.append(f"{key}={value} (trial {trial.number}; outside {describe(key, distributions[key]).removeprefix(key + ' in ')})")
            else:
                params[key] = value
        study.enqueue_trial(params, user_attrs={"warm_start": f"{source} trial {trial.number}"}, skip_if_exists=True)
    numbers = [t.number for t in best]
    log.info(
        "warm start: the first %d trial(s) of study %r take the best of study %r (trials %s)",
        len(best), study.study_name, source, ", ".join(map(str, numbers)),
    )  # fmt: skip
    if dropped:
        log.warning("warm start: dropped values outside this search: %s", "; ".join(dropped))
    return numbers


def champion_params(overrides: str, distributions: Mapping[str, BaseDistribution], who: str) -> tuple[dict[str, Any], list[str]]:
    """The values a registered model was trained with (its `overrides` tag: `key=value` words) for the
    keys this search has; those outside the space are returned as dropped, described with `who`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    params: dict[str, Any] = {}
    dropped: list[str] = []
    for word in overrides.split():
        key, _, text = word.partition("=")
        if key not in distributions:
            continue
        try:
            value = parser.parse_override(word).value()
        except Exception:  # noqa: BLE001 - a value Hydra cannot read back is simply not used
            value = text
        if isinstance(distributions[key], CategoricalDistribution) and value not in distributions[key].choices and text in distributions[key].choices:
            value = text  # a choice kept by its text (a list or dict value)
        if contains(distributions[key], value):
            params[key] = value
        else:
            dropped.append(f"{key}={text} ({who}; outside {describe(key, distributions[key]).removeprefix(key + ' in ')})")
    return params, dropped


def warm_start_from_champion(study: optuna.Study, registry: Any, name: str, alias: str, distributions: Mapping[str, BaseDistribution]) -> str:
    """Enqueue the registered `name@alias`'s settings as the next trial of `study`. Returns what was
    enqueued ("" when there is no such champion, or it has none of this search's keys)."""
    version = registry.version(name, alias)
    if version is None:
        log.info("warm start: no %s@%s registered yet; nothing to start from", name, alias)
        return ""
    who = f"{name}@{alias} v{version.version}"
    params, dropped = champion_params(version.tags.get("overrides", ""), distributions, who)
    if dropped:
        log.warning("warm start: dropped values outside this search: %s", "; ".join(dropped))
    if not params:
        log.info("warm start: %s has none of this search's values; nothing to start from", who)
        return ""
    study.enqueue_trial(params, user_attrs={"warm_start": who}, skip_if_exists=True)
    shown = " ".join(f"{k}={v}" for k, v in params.items())
    log.info("warm start: the next trial of study %r takes the settings of %s (%s)", study.study_name, who, shown)
    return who
