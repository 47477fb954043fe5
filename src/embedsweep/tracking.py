"""MLflow tracking: one run per Hydra job, one parent run per multirun, flat params, curated metrics.

We log through our own small TrainerCallback rather than transformers' `report_to="mlflow"`: that
callback logs ~150 TrainingArguments and the model config as params (which then clash when a
value changes) and names metrics by trainer prefix. Ours logs exactly the names the README lists.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import subprocess
import sys
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from embedsweep.errors import UserError

if TYPE_CHECKING:
    from transformers import TrainerCallback

log = logging.getLogger(__name__)

PARENT_ENV = "EMBEDSWEEP_PARENT_RUN_ID"
SWEPT_ENV = "EMBEDSWEEP_SWEPT_KEYS"
GROUPS = ("data", "eval", "loss", "model", "experiment", "hparams_search")  # config-group choices, logged as params under these plain names
_SECRET_IN_URL = re.compile(r"(?P<scheme>[a-zA-Z][\w+.-]*://)(?P<user>[^:/@\s]+):(?P<password>[^@/\s]+)@")
_SECRET_KEYS = re.compile(r"(password|passwd|secret|token|api[_-]?key)", re.IGNORECASE)


def redact(value: str) -> str:
    """Hide passwords in URLs (postgresql://user:pw@host -> postgresql://user:***@host)."""
    return _SECRET_IN_URL.sub(lambda m: f"{m['scheme']}{m['user']}:***@", value)


# ---------------------------------------------------------------- connecting


def _check_server(uri: str, timeout: float = 5.0) -> None:
    """A tracking server that does not answer fails the job now, not after MLflow's minutes of retries."""
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout)
    except requests.RequestException as exc:
        raise UserError(
            f"MLflow tracking server {redact(uri)} is unreachable ({type(exc).__name__}); "
            f"start it, or unset MLFLOW_TRACKING_URI / pass tracking.uri=sqlite:///outputs/mlflow.db"
        ) from exc


def connect(cfg: DictConfig) -> str:
    """Point MLflow at `cfg.uri` and return the id of experiment `cfg.experiment` (created if new)."""
    import mlflow

    uri = str(cfg.uri)
    lock: Any = nullcontext()
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        # Two processes creating a new store at once both run its schema migrations and one fails
        # ("table already exists"); a file lock makes the first one create it, the other wait.
        from filelock import FileLock

        lock = FileLock(f"{db}.lock")
    elif uri.startswith(("http://", "https://")):
        _check_server(uri)
    with lock:
        mlflow.set_tracking_uri(uri)
        return _experiment_id(cfg)


def _experiment_id(cfg: DictConfig) -> str:
    import mlflow
    from mlflow.exceptions import MlflowException

    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is not None:
        return experiment.experiment_id
    artifacts = cfg.get("artifact_location")
    if str(cfg.uri).startswith(("http://", "https://")):
        # A tracking server decides where artifacts go (--artifacts-destination, proxied through it):
        # a location from this client would be a path on this client's disk.
        artifacts = None
    location = Path(artifacts).resolve().as_uri() if artifacts and "://" not in str(artifacts) else artifacts
    try:
        return mlflow.create_experiment(cfg.experiment, artifact_location=location)
    except MlflowException:
        # Another job created it between our lookup and our create.
        experiment = mlflow.get_experiment_by_name(cfg.experiment)
        if experiment is None:
            raise
        return experiment.experiment_id


# ---------------------------------------------------------------- what a run records


def flat_params(cfg: DictConfig, choices: Mapping[str, Any]) -> dict[str, str]:
    """Group choices under plain names (`data`, `loss`...) and resolved values as dotted keys."""
    params = {g: str(choices[g]) for g in GROUPS if choices.get(g) is not None}
    resolved = OmegaConf.to_container(cfg, resolve=True)

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        elif not _SECRET_KEYS.search(prefix):
            params[prefix] = redact(str(node))

    for key, node in resolved.items():
        if key not in ("tracking", "paths"):
            walk(node, key)
    return params


def _git_commit() -> str:
    for where in (Path(__file__).resolve().parent, Path.cwd()):
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0:
            return out.stdout.strip()
    return "unknown"


def environment_tags() -> dict[str, str]:
    import sentence_transformers
    import torch
    import transformers

    from embedsweep import __version__
    from embedsweep.training import device_name

    commit = _git_commit()
    return {
        "device": device_name(),
        "torch_version": torch.__version__,
        "sentence_transformers_version": sentence_transformers.__version__,
        "transformers_version": transformers.__version__,
        "embedsweep_version": __version__,
        "git_commit": commit,
        "mlflow.source.git.commit": commit,
    }


def run_name(task_overrides: list[str], swept_keys: set[str], fallback: str) -> str:
    """What differs: the swept overrides in a multirun, all overrides in a single run."""
    chosen = [o for o in task_overrides if not swept_keys or o.split("=", 1)[0].lstrip("+~") in swept_keys]
    return " ".join(chosen) if chosen else fallback


# ---------------------------------------------------------------- one run per job


class JobRun:
    """The MLflow run of one Hydra job; the task function talks to this, never to mlflow."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        import mlflow

        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def trainer_callback(self) -> "TrainerCallback":
        from embedsweep.callbacks import MlflowMetrics

        return MlflowMetrics(self.log_metrics)


@contextmanager
def job_run(cfg: DictConfig) -> Iterator[JobRun]:
    """Start this job's run (a child of the multirun's parent, if any); end it FINISHED, FAILED
    (with the error as a tag and an artifact) or KILLED (Ctrl-C, SIGTERM)."""
    import mlflow
    from hydra.core.hydra_config import HydraConfig

    experiment_id = connect(cfg.tracking)
    hc = HydraConfig.get()
    choices = dict(hc.runtime.choices)
    swept = {k for k in os.environ.get(SWEPT_ENV, "").split(",") if k}
    tags = environment_tags() | {"hydra_output_dir": hc.runtime.output_dir, "hydra_mode": hc.mode.name}
    if hc.mode.name == "MULTIRUN":
        tags |= {"hydra_sweep_dir": str(Path(hc.sweep.dir).resolve()), "hydra_job_num": str(hc.job.num)}
    trial = cfg.get("trial")
    if trial is not None:  # launched by the Optuna sweeper: name the study and trial, final state at the end
        tags |= {"study_name": str(hc.sweeper.get("study_name")), "trial_number": str(trial), "trial_state": "RUNNING"}
    active = mlflow.start_run(
        experiment_id=experiment_id,
        run_name=run_name(list(hc.overrides.task), swept, f"loss={choices.get('loss')} batch={cfg.batch}"),
        parent_run_id=os.environ.get(PARENT_ENV) or None,
        tags=tags,
    )
    mlflow.log_params(flat_params(cfg, choices))
    mlflow.log_text(redact(OmegaConf.to_yaml(cfg, resolve=True)), "config.yaml")
    try:
        yield JobRun(active.info.run_id)
    except BaseException as exc:
        if _is_pruned(exc):
            # Stopped on purpose by the pruner, not broken: KILLED (MLflow's "ended early"), no error.
            _end(active.info.run_id, "KILLED", {"trial_state": "PRUNED", "pruned": str(exc)})
        else:
            killed = isinstance(exc, (KeyboardInterrupt, SystemExit))
            tags = {"error": redact(f"{type(exc).__name__}: {exc}")[:5000]} | ({"trial_state": "FAIL"} if trial is not None else {})
            _end(active.info.run_id, "KILLED" if killed else "FAILED", tags, "".join(traceback.format_exception(exc)))
        raise
    _end(active.info.run_id, "FINISHED", {"trial_state": "COMPLETE"} if trial is not None else {})


def _end(run_id: str, status: str, tags: Mapping[str, str], error_text: str | None = None) -> None:
    """Record how the run ended. An interruption can land mid-write and break the fluent API's
    session, so a failure to record details must not keep the run from getting its end status."""
    import mlflow

    client = mlflow.MlflowClient()
    try:
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
        if error_text is not None:
            client.log_text(run_id, redact(error_text), "error.txt")
    except Exception as exc:  # noqa: BLE001 - the end status below matters more than the details
        log.warning("could not record the end of MLflow run %s in full: %s", run_id, exc)
    finally:
        client.set_terminated(run_id, status)
        if (active := mlflow.active_run()) is not None and active.info.run_id == run_id:
            mlflow.end_run(status)


def _is_pruned(exc: BaseException) -> bool:
    """optuna.TrialPruned, checked without importing Optuna: if it is not loaded, nothing was pruned."""
    optuna = sys.modules.get("optuna")
    return optuna is not None and isinstance(exc, optuna.TrialPruned)


# ---------------------------------------------------------------- one parent per multirun


def _swept_keys(config: DictConfig) -> list[str]:
    """Keys a multirun varies: sweeps on the command line (`loss=mnr,cosine`) and a sweeper's params."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    keys = [o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()]
    params = config.hydra.sweeper.get("params") or {}
    return keys + [k for k in params if k not in keys]


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra-core < 1.1
    _HydraCallback = object  # type: ignore[assignment,misc]


_OPEN_SWEEPS: list["MultirunParentRun"] = []


def abort_open_sweeps(status: str) -> None:
    """End the parent run of a multirun that stopped on an error (FAILED) or a signal (KILLED)."""
    while _OPEN_SWEEPS:
        _OPEN_SWEEPS.pop()._abort(status)


class MultirunParentRun(_HydraCallback):
    """Hydra callback: opens the parent MLflow run of a multirun, and closes it with a summary.

    Jobs find their parent through environment variables, which Hydra's launchers pass on to
    the job processes (also joblib workers and SLURM jobs submitted from this process). The
    summary is read back from the child runs in MLflow: with a parallel launcher, Hydra's per-job
    callbacks run in the workers, not here.
    """

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.experiment_id = ""
        self.objective: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        import mlflow

        self.experiment_id = connect(config.tracking)
        self.objective = config.objective if isinstance(config.get("objective"), str) else None
        swept = _swept_keys(config)
        overrides = " ".join(config.hydra.overrides.task)
        run = mlflow.MlflowClient().create_run(
            self.experiment_id,
            run_name=f"sweep {' '.join(swept) or overrides}".strip(),
            tags={"embedsweep.role": "sweep", "hydra_sweep_dir": str(Path(config.hydra.sweep.dir).resolve()), "overrides": redact(overrides)}
            | environment_tags(),
        )
        self.run_id = run.info.run_id
        os.environ[PARENT_ENV] = self.run_id
        os.environ[SWEPT_ENV] = ",".join(swept)
        _OPEN_SWEEPS.append(self)
        atexit.register(self._abort)  # the sweep died before on_multirun_end

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # The sweeper returned, so by its own rule the sweep succeeded (the basic sweeper raises on
        # any failed job; the Optuna sweeper tolerates up to max_failure_rate): failures are counted.
        self._close("FINISHED")

    def _abort(self, status: str | None = None) -> None:
        """End a sweep that did not reach on_multirun_end: with `status` when the caller knows why,
        else FAILED if a job failed (a basic sweep ends with its error) and KILLED otherwise."""
        if self.run_id is not None:
            self._close(status or ("FAILED" if self._summary()[0]["jobs_failed"] else "KILLED"))

    def _summary(self) -> tuple[dict[str, float], Any]:
        """Job counts by outcome, and the finished child run with the best objective (or None)."""
        import mlflow

        children = mlflow.MlflowClient().search_runs(
            [self.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{self.run_id}'", max_results=50000
        )
        pruned = [r for r in children if r.data.tags.get("trial_state") == "PRUNED"]
        counts = {
            "jobs_finished": sum(r.info.status == "FINISHED" for r in children),
            "jobs_failed": sum(r.info.status in ("FAILED", "KILLED") for r in children) - len(pruned),
            "jobs_pruned": len(pruned),
        }
        scored = [r for r in children if r.info.status == "FINISHED" and self.objective in r.data.metrics]
        best = max(scored, key=lambda r: r.data.metrics[self.objective], default=None)
        return counts, best

    def _close(self, status: str) -> None:
        import mlflow

        if self.run_id is None:
            return
        client = mlflow.MlflowClient()
        counts, best = self._summary()
        if status == "FINISHED" and not any(counts.values()):
            # Nothing ran (an Optuna study whose budget is spent): leave no empty parent run behind.
            client.delete_run(self.run_id)
        else:
            for key, value in counts.items():
                client.log_metric(self.run_id, key, value)
            if best is not None:
                client.log_metric(self.run_id, "best_objective", best.data.metrics[self.objective])
                client.set_tag(self.run_id, "best_overrides", best.info.run_name)
                client.set_tag(self.run_id, "best_run_id", best.info.run_id)
            client.set_terminated(self.run_id, status)
        os.environ.pop(PARENT_ENV, None)
        os.environ.pop(SWEPT_ENV, None)
        self.run_id = None
        if self in _OPEN_SWEEPS:
            _OPEN_SWEEPS.remove(self)


def log_sweep_results(metrics: Mapping[str, float], params: Mapping[str, Any], tags: Mapping[str, Any], artifact: Path) -> None:
    """Log a sweeper's results (best values and params, the results file) to the multirun's parent run."""
    import mlflow

    run_id = os.environ.get(PARENT_ENV)
    if not run_id:
        return
    client = mlflow.MlflowClient()
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value))
    for key, value in params.items():
        client.log_param(run_id, key, redact(str(value)))
    for key, value in tags.items():
        client.set_tag(run_id, key, redact(str(value)))
    client.log_artifact(run_id, str(artifact))
