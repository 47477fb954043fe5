"""MLflow behind the tracker seam: one run per job, one parent run per sweep, flat params, curated metrics.

We log through our own small TrainerCallback rather than transformers' `report_to="mlflow"`: that
callback logs ~150 TrainingArguments and the model config as params (which then clash when a
value changes) and names metrics by trainer prefix. Ours logs exactly the names of run/metric_names.py,
whose prefixes make the sections of MLflow's chart view (the final scores first, alone).
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import traceback
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from omegaconf import DictConfig, OmegaConf

from embedsweep import redaction
from embedsweep.checks import stores
from embedsweep.checks.stores import one_line
from embedsweep.errors import UserError
from embedsweep.interrupts import deferred
from embedsweep.redaction import public_url, redact
from embedsweep.tracking import RecordedRun, flat_params, liveness, linkage_overrides, run_name
from embedsweep.tracking.mlflow_registry import MlflowRegistry, log_model

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from sentence_transformers import SentenceTransformer
    from transformers import TrainerCallback

    from embedsweep.run.data import RunData
    from embedsweep.run.noise import ScoredPairs

log = logging.getLogger(__name__)

SWEEP_ROLE = {"embedsweep.role": "sweep"}
PAIRS_FILE = "eval_pairs.json"  # a job's per-pair similarities (noise.ScoredPairs)
DATASET_CONTEXTS = {"train": "training", "eval": "eval", "test": "test"}  # a dataset input's context


def _check_server(uri: str, timeout: float = 5.0) -> None:
    """A tracking server that does not answer fails the job now, not after MLflow's minutes of retries."""
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout)
        _check_login(uri, timeout)
    except requests.RequestException as exc:
        raise UserError(
            f"MLflow tracking server {redact(uri)} is unreachable ({type(exc).__name__}); "
            f"start it, or unset MLFLOW_TRACKING_URI / pass tracking.uri=sqlite:///outputs/mlflow.db"
        ) from exc


def _check_login(uri: str, timeout: float) -> None:
    """A server with logins (`mlflow server --app-name basic-auth`) that refuses ours fails the command
    now, in one line, before any run or training: with the credentials MLflow itself would send
    (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN)."""
    import os

    import requests

    user, password, token = (os.environ.get(f"MLFLOW_TRACKING_{k}") for k in ("USERNAME", "PASSWORD", "TOKEN"))
    auth = (user, password or "") if user else None
    headers = {"Authorization": f"Bearer {token}"} if token and not user else {}
    answer = requests.get(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search", params={"max_results": 1}, auth=auth, headers=headers, timeout=timeout)
    if answer.status_code in (401, 403):
        who = f"the login of user {user!r}" if user else ("its token" if token else "a request without login")
        raise UserError(
            f"MLflow tracking server {redact(uri)} refused {who} ({answer.status_code} {answer.reason}); "
            f"set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account of that server (see deploy/README.md)"
        )


def quiet_mlflow(verbose: bool) -> None:
    """MLflow logs through its own handler (e.g. "Creating initial MLflow database tables...") and
    draws "Downloading artifacts" bars: both only with verbose=true."""
    import mlflow  # configures its handler and level on import: set ours after

    logging.getLogger(mlflow.__name__).setLevel(logging.INFO if verbose else logging.WARNING)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "true" if verbose else "false"
    # A full disk under the store: MLflow logs every statement that failed, with its traceback, before
    # raising; the command says it once, in one line (stores.full_disk_error).
    db_log = logging.getLogger("mlflow.store.db.utils")
    if stores.not_disk_full not in db_log.filters:
        db_log.addFilter(stores.not_disk_full)
    redaction.install()  # on the handler MLflow made for itself


def quiet_run_links() -> None:
    """MLflow writes "View run ... at: <tracking URI>" to stdout at each run's end, with the URI's
    credentials in it and past any log filter; the sweep's verdict prints its own link instead."""
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"


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
    from embedsweep.run.training import device_name

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


class MlflowTracker:
    """The tracker seam (tracking.py) with MLflow behind it; built from conf/tracking/mlflow.yaml."""

    def __init__(
        self,
        uri: str | None,
        experiment: str,
        artifact_location: str | None = None,
        ui_url: str | None = None,
        heartbeat_interval: float = liveness.DEFAULT_INTERVAL,
        stale_after: float = liveness.DEFAULT_STALE_AFTER,
        default_uri: str | None = None,
        verbose: bool = False,
        log_models: bool = False,
    ) -> None:
        # One resolution for every command (empty = unset, `~`, relative paths; file stores refused).
        self.uri = stores.tracking_uri(uri, default_uri)
        self.log_models = log_models  # every job's model to its own run, not only the promoted winner's
        self.experiment = experiment
        self.artifact_location = artifact_location
        self.heartbeat_interval = heartbeat_interval
        self.stale_after = stale_after
        # Where the MLflow UI answers: the server itself, or `make ui` over a local store. A link is
        # printed, stored and shared: never with the credentials of the tracking URI.
        self.ui_url = public_url(self.uri if self.uri.startswith(("http://", "https://")) else (ui_url or "http://127.0.0.1:5000"))
        quiet_run_links()
        quiet_mlflow(verbose)
        self._experiment_id: str | None = None

    # ------------------------------------------------------------ connecting

    def connect(self) -> str:
        """Point MLflow at the store and return the experiment's id (created if new)."""
        import mlflow

        if self._experiment_id is not None:
            return self._experiment_id
        lock: Any = nullcontext()
        db: Path | None = stores.sqlite_path(self.uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
            # Two processes creating a new store at once both run its schema migrations and one fails
            # ("table already exists"); a file lock makes the first one create it, the other wait.
            from filelock import FileLock

            lock = FileLock(f"{db}.lock")
        elif self.uri.startswith(("http://", "https://")):
            _check_server(self.uri)
        with lock:
            new = db is not None and (not db.exists() or db.stat().st_size == 0)
            mlflow.set_tracking_uri(self.uri)
            try:
                self._experiment_id = self._get_or_create_experiment()
            except BaseException:
                if new and db is not None:
                    # A store cut short in its migrations (a full disk) fails every later run ("duplicate
                    # column"); this one held nothing yet: it goes, and the next run creates it whole.
                    for leftover in (db, Path(f"{db}-journal")):
                        leftover.unlink(missing_ok=True)
                    _forget_engine(self.uri)
                raise
        return self._experiment_id

    def _get_or_create_experiment(self) -> str:
        import mlflow
        from mlflow.exceptions import MlflowException

        experiment = mlflow.get_experiment_by_name(self.experiment)
        if experiment is not None:
            return experiment.experiment_id
        artifacts = self.artifact_location
        if self.uri.startswith(("http://", "https://")):
            # A tracking server decides where artifacts go (--artifacts-destination, proxied through it):
            # a location from this client would be a path on this client's disk.
            artifacts = None
        location = Path(artifacts).resolve().as_uri() if artifacts and "://" not in str(artifacts) else artifacts
        try:
            return mlflow.create_experiment(self.experiment, artifact_location=location)
        except MlflowException:
            # Another job created it between our lookup and our create.
            experiment = mlflow.get_experiment_by_name(self.experiment)
            if experiment is None:
                raise
            return experiment.experiment_id

    def client(self) -> "MlflowClient":
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    # ------------------------------------------------------------ one run per job

    @contextmanager
    def job(self, cfg: DictConfig) -> Iterator["MlflowJobRun"]:
        import mlflow
        from hydra.core.hydra_config import HydraConfig

        experiment_id = self.connect()
        hc = HydraConfig.get()
        if hc.mode.name == "RUN":  # a sweep reaps once, at its start
            liveness.reap(self.client(), [experiment_id], self.stale_after)
        choices = dict(hc.runtime.choices)
        task = [o for o in hc.overrides.task if not o.startswith("sweep.")]
        tags = environment_tags() | {
            "hydra_output_dir": hc.runtime.output_dir,
            "hydra_mode": hc.mode.name,
            "overrides": redact(" ".join(o for o in task if not o.startswith("trial="))),
        }
        if hc.mode.name == "MULTIRUN":
            tags |= {"hydra_sweep_dir": str(Path(hc.sweep.dir).resolve()), "hydra_job_num": str(hc.job.num)}
        run: MlflowJobRun | None = None
        try:
            # The run's first record is written whole; a Ctrl-C that arrived meanwhile lands just
            # after it, inside this try, so the run still ends KILLED.
            with deferred():
                active = mlflow.start_run(
                    experiment_id=experiment_id,
                    run_name=run_name(task, list(cfg.sweep.swept), f"loss={choices.get('loss')} batch={cfg.batch}"),
                    parent_run_id=cfg.sweep.parent_run_id or None,
                    tags=tags,
                )
                run = MlflowJobRun(active.info.run_id, self.client(), self.log_models)
                mlflow.log_params(flat_params(cfg, choices))
                mlflow.log_text(redact(OmegaConf.to_yaml(cfg, resolve=True)), "config.yaml")
            with liveness.Heartbeat(run.client, run.run_id, self.heartbeat_interval):
                yield run
        except BaseException as exc:
            if run is None:  # no run was started: nothing to end
                raise
            if run.early_stop_reason is not None:
                # Stopped on purpose (a pruned trial), not broken: KILLED (MLflow's "ended early"), no error.
                _end(run.client, run.run_id, "KILLED", {})
            else:
                killed = isinstance(exc, (KeyboardInterrupt, SystemExit))
                error = {"error": redact(f"{type(exc).__name__}: {exc}")[:5000]}
                _end(run.client, run.run_id, "KILLED" if killed else "FAILED", error, "".join(traceback.format_exception(exc)))
            raise
        _end(run.client, run.run_id, "FINISHED", {})

    # ------------------------------------------------------------ one parent run per sweep

    @contextmanager
    def sweep(self, config: DictConfig, swept: Sequence[str]) -> Iterator["MlflowSweepRun"]:
        """The parent run: opened here, ended FINISHED, FAILED or KILLED on the way out (unless the
        conclusion discarded it). What goes in it at the end is the conclusion's (embedsweep.conclude)."""
        experiment_id = self.connect()
        client = self.client()
        # Runs left RUNNING by a killed job or sweep (kill -9, a lost node) end FAILED before we add ours.
        liveness.reap(client, [experiment_id], self.stale_after)
        overrides = " ".join(config.hydra.overrides.task)
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        objective = config.objective if isinstance(config.get("objective"), str) else None
        created = client.create_run(
            experiment_id,
            run_name=redact(f"sweep {' '.join(swept) or overrides}".strip()),
            tags=SWEEP_ROLE | {"hydra_sweep_dir": str(sweep_dir), "overrides": redact(overrides), "swept": ",".join(swept)}
            | ({"objective": objective} if objective else {}) | environment_tags(),
        )
        parent = MlflowSweepRun(created.info.run_id, client, list(swept), self)
        status = "FINISHED"
        try:
            with liveness.Heartbeat(client, parent.run_id, self.heartbeat_interval):
                yield parent
        except BaseException as exc:
            status = "KILLED" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "FAILED"
            raise
        finally:
            if not parent.discarded:
                with deferred():  # a second Ctrl-C must not leave the sweep's run RUNNING
                    client.set_terminated(parent.run_id, status)

    # ------------------------------------------------------------ reading back, registry

    def registry(self) -> MlflowRegistry:
        self.connect()  # the registry lives in the same store
        return MlflowRegistry(self.client())

    def reachable(self) -> None:
        """A tracking server that does not answer, or refuses our login: one line now (_check_server)."""
        if self.uri.startswith(("http://", "https://")):
            _check_server(self.uri)

    def sweep_record(self, run_id: str | None = None) -> tuple[RecordedRun, "MlflowSweepRun"]:
        self.reachable()
        client = self.client()
        parent = client.get_run(run_id) if run_id else latest_sweep(client, self.experiment)
        swept = [k for k in parent.data.tags.get("swept", "").split(",") if k]
        return recorded(parent), MlflowSweepRun(parent.info.run_id, client, swept, self)

    def scored_pairs(self, run_id: str, name: str = PAIRS_FILE) -> "ScoredPairs | None":
        """Per-pair similarities kept on a run (a job's eval pairs; a sweep's test pairs), or None."""
        from embedsweep.run.noise import ScoredPairs

        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = self.client().download_artifacts(run_id, name, tmp)
                return ScoredPairs.from_json(Path(path).read_text())
            except Exception as exc:  # noqa: BLE001 - without them the verdict falls back to the intervals
                log.debug("no per-pair similarities %s for run %s: %s", name, run_id, exc)
                return None

    def runs(self, search_filter: str = "") -> list[RecordedRun]:
        """The experiment's runs (those `search_filter` selects), newest first; the benchmarks read their runs back this way."""
        experiment = self.client().get_experiment_by_name(self.experiment)
        if experiment is None:
            return []
        found = self.client().search_runs([experiment.experiment_id], filter_string=search_filter, order_by=["attributes.start_time DESC"], max_results=50000)
        return [recorded(r) for r in found]

    def study_runs(self, study_name: str) -> list[RecordedRun]:
        return self.runs(f"tags.study_name = '{study_name}'")

    def runs_link(self, experiment_id: str, search_filter: str | None = None, order_by_metric: str | None = None) -> str:
        """A link to an experiment's runs table. `workflowType=machine_learning` opens the classic
        runs view: MLflow 3 otherwise lands on its GenAI traces page."""
        query = {"workflowType": "machine_learning"}
        if search_filter:
            query["searchFilter"] = search_filter
        if order_by_metric:
            query |= {"orderByKey": f"metrics.`{order_by_metric}`", "orderByAsc": "false"}
        return f"{self.ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{urlencode(query, quote_via=quote)}"

    def ui_link(self) -> str:
        """The UI link of the latest sweep, or of the experiment's runs table when there is no sweep yet."""
        self.reachable()
        client = self.client()
        found = client.get_experiment_by_name(self.experiment)
        if found is None:
            return f"{self.ui_url}/#/experiments"
        try:
            return latest_sweep(client, self.experiment).data.tags.get("ui_link") or self.runs_link(found.experiment_id)
        except UserError:
            return self.runs_link(found.experiment_id)


def latest_sweep(client: "MlflowClient", experiment: str) -> "Run":
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise UserError(f"no experiment {experiment!r} in the tracking store; run a sweep first, or pass --experiment")
    (key, value), = SWEEP_ROLE.items()
    runs = client.search_runs([found.experiment_id], filter_string=f"tags.`{key}` = '{value}'", order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise UserError(f"experiment {experiment!r} holds no sweep yet; run one with `python train.py -m ...`")
    return runs[0]


def recorded(run: "Run") -> RecordedRun:
    info, data = run.info, run.data
    seconds = (info.end_time - info.start_time) / 1000 if info.end_time and info.start_time else None
    return RecordedRun(info.run_id, info.run_name or info.run_id, info.status, dict(data.params), dict(data.metrics), dict(data.tags), seconds)


def _forget_engine(uri: str) -> None:
    """MLflow keeps one SQLAlchemy engine per store URI for the process: after the file was removed, a
    later connect in this process (a joblib worker's next job) must open the new file, not the old one."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        engine = SqlAlchemyStore._engine_map.pop(uri, None)
        if engine is not None:
            engine.dispose()
    except Exception as exc:  # noqa: BLE001 - MLflow's internals moved: only this process's later runs are affected
        log.debug("could not drop MLflow's engine for %s: %s", uri, exc)


class MlflowJobRun:
    """The MLflow run of one job (tracking.JobRun)."""

    def __init__(self, run_id: str, client: "MlflowClient", log_models: bool = False) -> None:
        self.run_id = run_id
        self.client = client
        self.log_models = log_models
        self.early_stop_reason: str | None = None

    def keep_model(self, model: "SentenceTransformer") -> None:
        if self.log_models:
            log_model(model, self.run_id)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import mlflow

        with deferred():
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step, run_id=self.run_id)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        # One call per tag through the client: the tags that say how a run ended are set on the way out.
        with deferred():
            for key, value in tags.items():
                self.client.set_tag(self.run_id, key, redact(str(value)))

    def log_artifact(self, path: Path) -> None:
        with deferred():
            self.client.log_artifact(self.run_id, str(path))

    def keep_scored_pairs(self, pairs: "ScoredPairs") -> None:
        try:
            with deferred():
                self.client.log_text(self.run_id, pairs.to_json(), PAIRS_FILE)
        except Exception as exc:  # noqa: BLE001 - the job's scores stand; its verdict falls back to the intervals
            log.warning("could not keep the per-pair similarities of run %s: %s", self.run_id, one_line(exc))

    def log_datasets(self, sets: "RunData") -> None:
        """MLflow dataset inputs (the UI's Dataset column, `run.inputs` in the API), one per set, with
        the set's content fingerprint as digest; and the fingerprints as tags, for searching runs."""
        import mlflow.data
        from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        inputs = []
        for key, frame in sets.frames.items():
            record = sets.records[key]
            source = HuggingFaceDatasetSource(record.uri, config_name=record.hub_subset, split=record.hub_split) if record.hub_split else redact(record.uri)
            # MLflow's hints (a path it finds "ambiguous" because it registers its file source twice, integer
            # columns in the inferred schema) say nothing about the data: kept off the console.
            # The schema is inferred when the record is made (`_to_mlflow_entity`), so both steps are inside.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                dataset = mlflow.data.from_pandas(frame, source=source, name=record.name, digest=sets.fingerprints[key])
                entity = dataset._to_mlflow_entity()
            inputs.append(DatasetInput(entity, [InputTag(MLFLOW_DATASET_CONTEXT, DATASET_CONTEXTS[key])]))
        with deferred():
            self.client.log_inputs(self.run_id, datasets=inputs)
        self.set_tags({f"fingerprint.{key}": value for key, value in sets.fingerprints.items()})

    def trainer_callback(self) -> "TrainerCallback":
        from embedsweep.run.callbacks import MlflowMetrics

        return MlflowMetrics(self.log_metrics)

    def stopped_early(self, reason: str) -> None:
        self.early_stop_reason = reason


class MlflowSweepRun:
    """The parent MLflow run of a sweep (tracking.SweepRun)."""

    def __init__(self, run_id: str, client: "MlflowClient", swept: list[str], tracker: MlflowTracker) -> None:
        self.run_id = run_id
        self.client = client
        self.swept = swept
        self.tracker = tracker
        self.discarded = False
        self.job_overrides = linkage_overrides(run_id, swept)

    def log_results(
        self, metrics: Mapping[str, float], params: Mapping[str, Any], tags: Mapping[str, Any], artifact: Path | None = None, artifact_dir: str | None = None
    ) -> None:
        with deferred():
            for key, value in metrics.items():
                self.client.log_metric(self.run_id, key, float(value))
            for key, value in params.items():
                self.client.log_param(self.run_id, key, redact(str(value)))
            for key, value in tags.items():
                self.client.set_tag(self.run_id, key, redact(str(value)))
            if artifact is not None:
                self.client.log_artifact(self.run_id, str(artifact), artifact_path=artifact_dir)

    def tags(self) -> dict[str, str]:
        return dict(self.client.get_run(self.run_id).data.tags)

    def jobs(self) -> list[RecordedRun]:
        parent = self.client.get_run(self.run_id)
        # Oldest first: the verdict ranks ties in this order, so a tie goes to the earlier job, as
        # Optuna's best trial and the sweeper's kept model do (one best, said the same way everywhere).
        children = self.client.search_runs(
            [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{self.run_id}'", max_results=50000,
            order_by=["attributes.start_time ASC"],
        )  # fmt: skip
        return [recorded(r) for r in children]

    def scored_pairs(self, run_id: str) -> "ScoredPairs | None":
        return self.tracker.scored_pairs(run_id)

    def discard(self) -> None:
        self.client.delete_run(self.run_id)
        self.discarded = True

    def link(self, order_by: str | None = None) -> str:
        """The MLflow UI's runs table filtered to this sweep's jobs, best first."""
        return self.tracker.runs_link(self.tracker.connect(), f"tags.mlflow.parentRunId = '{self.run_id}'", order_by)


def _end(client: "MlflowClient", run_id: str, status: str, tags: Mapping[str, str], error_text: str | None = None) -> None:
    """Record how the run ended. A failure to record details must not keep the run from getting its end status."""
    import mlflow

    with deferred():  # a second Ctrl-C must not leave the run RUNNING
        try:
            for key, value in tags.items():
                client.set_tag(run_id, key, redact(value))
            if error_text is not None:
                client.log_text(run_id, redact(error_text), "error.txt")
        except Exception as exc:  # noqa: BLE001 - the end status below matters more than the details
            log.warning("could not record the end of MLflow run %s in full: %s", run_id, one_line(exc))
        finally:
            try:
                client.set_terminated(run_id, status)
            finally:
                # Off MLflow's stack even when the store refused the end (a full disk): its exit hook
                # would otherwise end the run FINISHED.
                if (active := mlflow.active_run()) is not None and active.info.run_id == run_id:
                    with suppress(Exception):
                        mlflow.end_run(status)
