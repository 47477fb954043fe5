"""The end of a sweep: score its best job's model on the held-out test set, register it, and move the
champion alias to it only when it is better by more than the noise of the test set.

The test set is seen once per sweep, by one model: the one the validation set chose. Trials never
see it (app.py), so `best_objective` stays a selection score and the test score an unbiased one.

The rule for the alias, for a nightly sweep whose result should replace yesterday's only when it is
really better: the current champion is re-scored on the same test pairs, and the alias moves when the
paired 95% bootstrap interval of (new - champion) on the objective lies above zero (noise.py). Re-scoring
rather than trusting the champion's recorded score keeps the comparison fair when the test set changes.
With no champion yet, the first version is compared with the untouched model it was trained from (the
best job's own model config and seed): it becomes champion unless it is worse beyond noise, so the
alias never lands on a model measurably worse than the one the sweep started from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from embedsweep.run import data, evaluate, noise
from embedsweep.redaction import redact
from embedsweep.conclude.verdict import JobResult

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from sentence_transformers import SentenceTransformer

MODEL_ARTIFACT = "model"


@dataclass
class Promotion:
    """What happened, for the verdict and the parent run."""

    notes: list[str] = field(default_factory=list)
    version: str | None = None
    champion: bool = False
    test: dict[str, float] = field(default_factory=dict)


def model_dir(output_dir: str | None) -> Path | None:
    """The best job's saved model folder, if it saved one."""
    if not output_dir:
        return None
    path = Path(output_dir) / "model"
    return path if (path / "modules.json").is_file() else None


def check(config: DictConfig) -> None:
    """Read the test set at the start of a sweep: a wrong path or an unreachable Hub fails in seconds,
    not after the last trial."""
    if config.get("test") is not None and config.test.source != "none" and config.get("promote", {}).get("model_name"):
        data.load_test(config)


def promote(client: "MlflowClient", parent_run_id: str, ranked: Sequence[JobResult], config: DictConfig, objective: str) -> Promotion:
    """Score the best job on config.test, log and register its model, move the alias if it wins.
    Jobs tied exactly on the objective are equally best: the first of them with a saved model is taken
    (an Optuna sweep keeps one model, not one per tied trial)."""
    result = Promotion()
    name, alias = config.promote.model_name, config.promote.alias
    if config.test.source == "none" or not name:
        result.notes.append("not promoted: no test set (test=none) or no registry name (promote.model_name=null)")
        return result
    top = ranked[0].score(objective)
    tied = [r for r in ranked if r.state == "FINISHED" and r.score(objective) == top]
    found = [(r, model_dir(client.get_run(r.run_id).data.tags.get("hydra_output_dir"))) for r in tied]
    best, folder = next(((r, f) for r, f in found if f is not None), (tied[0], None))
    if folder is None:
        result.notes.append(f"not promoted: the best job ({best.name}) saved no model (trainer.save_model=false?)")
        return result

    from embedsweep.run import models

    trust = bool(config.get("model", {}).get("trust_remote_code", False))
    pairs = data.load_test(config)
    model = models.load_folder(folder, trust)
    evaluator = evaluate.sts_evaluator(pairs, batch_size=config.trainer.eval_batch_size)
    scored = evaluate.score_with_similarities(model, evaluator)
    result.test = {f"test_{k}": v for k, v in scored.metrics.items()}
    for key, value in result.test.items():
        client.log_metric(parent_run_id, key, value)

    version = _log_and_register(client, model, parent_run_id, name, best, result.test, objective, pairs.source)
    result.version = str(version.version)

    champion = _current(client, name, alias)
    if champion is None:  # the first version must not be worse than the model it started from
        base = evaluate.score_with_similarities(untouched_model(folder, config), evaluator)
        worse, compared = falls_short(scored.similarities, base.similarities, pairs.scores, objective)
        tag, compared, moves = "vs_untouched", f"{compared} vs the untouched model", not worse
        why = f"worse beyond noise, so it does not become @{alias}" if worse else f"the first version not worse beyond noise, so it becomes @{alias}"
    else:  # a later version must beat the champion
        old = evaluate.score_with_similarities(registered_model(name, champion.version, trust), evaluator)
        moves, compared = beats(scored.similarities, old.similarities, pairs.scores, objective)
        tag, compared = "vs_champion", f"{compared} vs @{alias} (version {champion.version})"
        why = f"better beyond noise, so it becomes @{alias}" if moves else f"not better beyond noise, so @{alias} stays on version {champion.version}"
    client.set_model_version_tag(name, version.version, tag, compared)
    if moves:
        client.set_registered_model_alias(name, alias, version.version)
        result.champion = True
    result.notes.append(f"registered {name} version {version.version}, {compared}: {why}")
    client.set_model_version_tag(name, version.version, "promotion", result.notes[-1])
    client.set_tag(parent_run_id, "promoted_version", version.version)
    client.set_tag(parent_run_id, "promoted_champion", str(result.champion).lower())
    return result


def beats(new: Sequence[float], old: Sequence[float], gold: Sequence[float], objective: str) -> tuple[bool, str]:
    """Whether the new model's similarities beat the old one's on the same pairs by more than the
    noise: the paired 95% bootstrap interval of the difference lies above zero. And why, in words."""
    diff, words = _paired(new, old, gold, objective)
    return diff.low > 0, words


def falls_short(new: Sequence[float], old: Sequence[float], gold: Sequence[float], objective: str) -> tuple[bool, str]:
    """Whether the new model is worse than the old one beyond the noise: the paired interval of the
    difference lies below zero. And why, in words."""
    diff, words = _paired(new, old, gold, objective)
    return diff.high < 0, words


def _paired(new: Sequence[float], old: Sequence[float], gold: Sequence[float], objective: str) -> tuple[noise.Interval, str]:
    new_score, old_score = noise.score(objective, new, gold), noise.score(objective, old, gold)
    diff = noise.difference_interval(new, old, gold, objective)
    words = (
        f"test {objective} {new_score:.4f} against {old_score:.4f} on the same pairs, {new_score - old_score:+.4f} "
        f"(paired 95% interval [{diff.low:+.4f}, {diff.high:+.4f}])"
    )
    return diff, words


def untouched_model(folder: Path, sweep_config: DictConfig) -> "SentenceTransformer":
    """The model the best job started from: built from that job's own config (its model and seed, in
    the job folder Hydra wrote), so a swept model or a random-init model is rebuilt exactly; from the
    sweep's config when the job folder holds none (`hydra.output_subdir=null`)."""
    from omegaconf import OmegaConf

    from embedsweep.run import models

    saved = folder.parent / ".hydra" / "config.yaml"
    job = OmegaConf.load(saved) if saved.is_file() else sweep_config
    return models.build_model(job.model, seed=job.trainer.seed)


def registered_model(name: str, version: str, trust_remote_code: bool = False) -> "SentenceTransformer":
    """A registered model version, loaded as data: its artifacts downloaded from the registry (at the
    tracking URI set by the tracker), then its saved SentenceTransformer folder loaded by models.load_folder.
    Never mlflow.sentence_transformers.load_model, which always trusts remote code and puts the
    version's own code paths on sys.path: whoever can register a version would run code here."""
    import tempfile

    import mlflow.artifacts
    import yaml
    from mlflow.sentence_transformers import SENTENCE_TRANSFORMERS_DATA_PATH

    from embedsweep.run import models
    from embedsweep.errors import UserError

    with tempfile.TemporaryDirectory(prefix="embedsweep-registered-") as tmp:
        root = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=tmp))
        flavors = (yaml.safe_load((root / "MLmodel").read_text()) or {}).get("flavors", {})
        # The folder MLflow's log_model writes (model.sentence_transformer/), a fixed name as in its loader.
        folder = root / SENTENCE_TRANSFORMERS_DATA_PATH
        if "sentence_transformers" not in flavors or folder.is_symlink() or not (folder / "modules.json").is_file():
            raise UserError(f"{name} version {version} is not a sentence-transformers model logged by MLflow (no {SENTENCE_TRANSFORMERS_DATA_PATH}/modules.json)")
        return models.load_folder(folder, trust_remote_code)


def _current(client: "MlflowClient", name: str, alias: str):  # noqa: ANN202 - mlflow's ModelVersion
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _log_and_register(
    client: "MlflowClient", model: "SentenceTransformer", parent_run_id: str, name: str, best: JobResult, test: dict[str, float], objective: str, test_source: str
):  # noqa: ANN202 - mlflow's ModelVersion
    import mlflow
    import mlflow.sentence_transformers
    import sentence_transformers
    import torch
    import transformers

    # Pinning the requirements skips MLflow's inference of them, which loads the model again in a subprocess.
    requirements = [
        f"sentence-transformers=={sentence_transformers.__version__}",
        f"transformers=={transformers.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
    ]
    with mlflow.start_run(run_id=parent_run_id):
        info = mlflow.sentence_transformers.log_model(model, name=MODEL_ARTIFACT, pip_requirements=requirements)
    try:
        client.create_registered_model(name)
    except mlflow.exceptions.MlflowException:
        pass  # already there
    tags = {
        "sweep_run_id": parent_run_id,
        "best_run_id": best.run_id,
        "overrides": redact(best.overrides),
        f"validation_{objective}": f"{best.metrics.get(objective, float('nan')):.6f}",
        "test_set": test_source,
    } | {k: f"{v:.6f}" for k, v in test.items()}
    # model_id: a tracking server checks that the source (models:/m-...) is that logged model.
    return client.create_model_version(name, info.model_uri, run_id=parent_run_id, tags=tags, model_id=info.model_id)
