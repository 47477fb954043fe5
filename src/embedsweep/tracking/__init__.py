"""The tracker seam: what a job and a sweep ask of experiment tracking, whatever the tracker.

A tracker records; it decides nothing. It writes a job's params, metrics, artifacts, datasets and
end state, a sweep's parent record and its results, registers models, and reads runs back. What a
sweep concludes from them (verdict, test score, promotion, drift) is `embedsweep.conclude`, which talks
to the tracker through this seam only. MLflow is imported in this subpackage and nowhere else.

A job opens its run with `tracker.job(cfg)`, a sweeper opens the sweep's parent run with
`tracker.sweep(config, swept)`. Everything a job needs to know about its sweep (the parent run, the
keys the sweep varies) travels in the job's own config (`sweep.parent_run_id`, `sweep.swept`): the
sweeper appends `SweepRun.job_overrides` to every job it launches, so a joblib worker or a SLURM
node gets the same. `conf/tracking/<name>.yaml` picks the implementation by its `_target_`;
MLflow (mlflow_tracker.py, with its model registry in mlflow_registry.py) is the one we ship.

Nothing here knows about Optuna: a trial tags its own run (pruning.py), and a job stopped on purpose
says so through `JobRun.stopped_early`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from omegaconf import DictConfig, OmegaConf

from embedsweep.redaction import SECRET_NAME, redact  # redact: also imported from here by the sweepers

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from transformers import TrainerCallback

    from embedsweep.run.data import RunData
    from embedsweep.run.noise import ScoredPairs

GROUPS = ("data", "eval", "loss", "model", "experiment", "hparams_search")  # config-group choices, logged under these plain names
NOT_PARAMS = ("tracking", "paths", "sweep")  # where runs are recorded and how they link: not hyperparameters
# The tags of an Optuna trial's run: its study, its number, and its state as Optuna names it (RUNNING,
# COMPLETE, PRUNED, FAIL). Set by embedsweep.studies.pruning; read by the conclusion, the plots and liveness.
STUDY_NAME, TRIAL_NUMBER, TRIAL_STATE = "study_name", "trial_number", "trial_state"


# ---------------------------------------------------------------- the seam


@dataclass(frozen=True)
class RecordedRun:
    """A run read back from the tracker, in plain values: what the conclusion and the report need."""

    run_id: str
    name: str
    status: str  # FINISHED | FAILED | KILLED | RUNNING
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    seconds: float | None = None


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a model name, with the tags it was registered with."""

    name: str
    version: str
    tags: dict[str, str] = field(default_factory=dict)


class Registry(Protocol):
    """Named, versioned models with movable aliases (`@champion`)."""

    def version(self, name: str, alias: str) -> ModelVersion | None:
        """The version an alias points to, or None (no such name or alias)."""
    def register(self, model: "SentenceTransformer", run_id: str, name: str, tags: Mapping[str, str]) -> ModelVersion:
        """Log the model to the run and register it as a new version of `name`."""
    def set_alias(self, name: str, alias: str, version: str) -> None: ...
    def tag_version(self, name: str, version: str, tags: Mapping[str, str]) -> None: ...
    def load(self, name: str, version: str, trust_remote_code: bool = False) -> "SentenceTransformer":
        """A registered version as a model, loaded as data (never running the version's own code)."""


class JobRun(Protocol):
    """The record of one job. The task function talks to this, never to a tracking library."""

    run_id: str

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...
    def log_artifact(self, path: Path) -> None: ...
    def keep_scored_pairs(self, pairs: "ScoredPairs") -> None:
        """Keep the final evaluation's per-pair similarities: the sweep compares jobs pair by pair."""
    def log_datasets(self, sets: "RunData") -> None:
        """Record what the run trained, selected and tested on: source, fingerprint and size of each set."""
    def trainer_callback(self) -> "TrainerCallback": ...
    def keep_model(self, model: "SentenceTransformer") -> None:
        """Log the trained model to this run, where the tracker is set to (`tracking.log_models=true`)."""
    def stopped_early(self, reason: str) -> None:
        """The exception about to leave the job stops it on purpose (a pruned trial): not an error."""


class SweepRun(Protocol):
    """The record of one sweep (a multirun): the parent of its jobs' runs."""

    run_id: str
    job_overrides: list[str]  # appended to every job's overrides: how a job finds its sweep

    def log_results(
        self, metrics: Mapping[str, float], params: Mapping[str, Any], tags: Mapping[str, Any], artifact: Path | None = None, artifact_dir: str | None = None
    ) -> None: ...
    def jobs(self) -> list[RecordedRun]:
        """The sweep's job runs as recorded so far (on this machine or any other)."""
    def tags(self) -> dict[str, str]:
        """The sweep's own tags as recorded so far (study name, data version, ...)."""
    def scored_pairs(self, run_id: str) -> "ScoredPairs | None":
        """A job's final evaluation pair by pair (`JobRun.keep_scored_pairs`), if it kept one."""
    def discard(self) -> None:
        """Remove the parent record: a sweep that ran nothing leaves no empty parent behind."""
    def link(self, order_by: str | None = None) -> str:
        """Where a person sees this sweep's jobs (the MLflow UI's runs table), best first."""


class Tracker(Protocol):
    def registry(self) -> Registry: ...
    def ui_link(self) -> str:
        """Where a person sees the latest sweep (or the experiment's runs when there is none)."""
    def sweep_record(self, run_id: str | None = None) -> tuple[RecordedRun, SweepRun]:
        """A finished sweep read back (the latest when run_id is None): its parent and its jobs."""
    def scored_pairs(self, run_id: str, name: str) -> "ScoredPairs | None":
        """Per-pair similarities kept on any run under that file name, or None."""
    def study_runs(self, study_name: str) -> list[RecordedRun]:
        """Every job run of an Optuna study, across all the sweeps that resumed it."""

    def job(self, cfg: DictConfig) -> AbstractContextManager[JobRun]:
        """Open this job's run (a child of `cfg.sweep.parent_run_id`, if set); close it FINISHED,
        FAILED (with the error) or KILLED (Ctrl-C, SIGTERM, stopped early)."""

    def sweep(self, config: DictConfig, swept: Sequence[str]) -> AbstractContextManager[SweepRun]:
        """Open a sweep's parent run; close it with its verdict (FINISHED), FAILED or KILLED."""


def make_tracker(cfg: DictConfig) -> Tracker:
    """The tracker named by `cfg._target_` (conf/tracking). Only the main process of a job
    (rank 0 under torchrun) records anything, so a multi-process job is not logged twice."""
    from hydra.utils import instantiate

    from embedsweep.run.distributed import is_main_process

    if not is_main_process():
        return NullTracker()
    return instantiate(cfg, _convert_="all")


class _NullRun:
    run_id = ""
    job_overrides: list[str] = []

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def log_artifact(self, path: Path) -> None:
        pass

    def keep_scored_pairs(self, pairs: "ScoredPairs") -> None:
        pass

    def log_datasets(self, sets: "RunData") -> None:
        pass

    def trainer_callback(self) -> "TrainerCallback":
        from transformers import TrainerCallback

        return TrainerCallback()

    def keep_model(self, model: "SentenceTransformer") -> None:
        pass

    def stopped_early(self, reason: str) -> None:
        pass

    def log_results(
        self, metrics: Mapping[str, float], params: Mapping[str, Any], tags: Mapping[str, Any], artifact: Path | None = None, artifact_dir: str | None = None
    ) -> None:
        pass

    def jobs(self) -> list[RecordedRun]:
        return []

    def tags(self) -> dict[str, str]:
        return {}

    def scored_pairs(self, run_id: str) -> None:
        return None

    def discard(self) -> None:
        pass

    def link(self, order_by: str | None = None) -> str:
        return ""


class NullTracker:
    """Records nothing: the other ranks of a distributed job (`tracking=none` uses it too)."""

    def __init__(self, **_: Any) -> None:
        pass

    @contextmanager
    def job(self, cfg: DictConfig) -> Iterator[JobRun]:
        yield _NullRun()

    @contextmanager
    def sweep(self, config: DictConfig, swept: Sequence[str]) -> Iterator[SweepRun]:
        yield _NullRun()

    def registry(self) -> Registry:
        raise RuntimeError("tracking=none keeps no model registry")

    def sweep_record(self, run_id: str | None = None) -> tuple[RecordedRun, SweepRun]:
        raise RuntimeError("tracking=none records no sweeps")

    def study_runs(self, study_name: str) -> list[RecordedRun]:
        return []

    def scored_pairs(self, run_id: str, name: str) -> None:
        return None


# ---------------------------------------------------------------- what any tracker records


def flat_params(cfg: DictConfig, choices: Mapping[str, Any]) -> dict[str, str]:
    """Group choices under plain names (`data`, `loss`...) and resolved values as dotted keys."""
    params = {g: str(choices[g]) for g in GROUPS if choices.get(g) is not None}
    resolved = OmegaConf.to_container(cfg, resolve=True)

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        elif not SECRET_NAME.search(prefix):
            params[prefix] = redact(str(node))

    for key, node in resolved.items():
        if key not in NOT_PARAMS:
            walk(node, key)
    return params


def run_name(task_overrides: Sequence[str], swept_keys: Sequence[str], fallback: str) -> str:
    """What differs: the swept overrides in a multirun, all overrides in a single run (secrets hidden)."""
    from embedsweep.swept import key_of, parse

    keys = set(swept_keys)
    chosen = [o.input_line for o in parse(task_overrides) if not key_of(o).startswith("sweep.") and (not keys or key_of(o) in keys)]
    return redact(" ".join(chosen)) if chosen else fallback


def linkage_overrides(parent_run_id: str, swept: Sequence[str]) -> list[str]:
    """The overrides that tie a job to its sweep (read back as `cfg.sweep`)."""
    return [f"sweep.parent_run_id={parent_run_id}", f"sweep.swept=[{','.join(swept)}]"]
