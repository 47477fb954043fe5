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

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from embedsweep.conclude.verdict import JobResult
from embedsweep.redaction import redact
from embedsweep.run import data, evaluate, noise
from embedsweep.run import metric_names as names

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from embedsweep.tracking import Registry, SweepRun

TEST_PAIRS_FILE = "test_pairs.json"  # the winner's similarities on the test pairs, on the sweep's record
TASKS = {"nli": "nli", "scored": "similarity"}  # data.kind -> the task word in a registry name


@dataclass
class Promotion:
    """What happened, for the verdict and the parent run."""

    notes: list[str] = field(default_factory=list)
    name: str | None = None
    version: str | None = None
    champion: bool = False
    test: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"registered_model": self.name, "version": self.version, "champion": self.champion, "test": self.test, "notes": self.notes}


def model_dir(output_dir: str | None) -> Path | None:
    """The best job's saved model folder, if it saved one."""
    if not output_dir:
        return None
    path = Path(output_dir) / "model"
    return path if (path / "modules.json").is_file() else None


def base_model(model_cfg: DictConfig) -> str:
    """What a model was trained from, in words that identify it: the packaged or Hub model, or a
    random-init architecture."""
    if model_cfg.get("source") == "random_bert":
        return f"random-init {model_cfg.get('name', 'bert')} ({model_cfg.get('num_hidden_layers')} layers, {model_cfg.get('hidden_size')} wide)"
    return str(model_cfg.get("hub_id") or model_cfg.get("name"))


def registry_name(config: DictConfig) -> str:
    """`promote.model_name`, or by default `<model>-<task>` (e.g. minilm-nli, minilm-similarity): a
    registered name says what it holds, and a champion is only challenged by models of its kind."""
    given = config.promote.get("model_name")
    if given:
        return str(given)
    return f"{config.model.get('name', 'model')}-{TASKS.get(config.data.get('kind', 'nli'), 'nli')}"


def job_config(result: JobResult, sweep_config: DictConfig) -> DictConfig:
    """A job's own config (its model, seed and data, in the job folder Hydra wrote), merged over the
    sweep's (which has the promote and test settings); the sweep's alone when the folder holds none."""
    saved = Path(result.output_dir) / ".hydra" / "config.yaml" if result.output_dir else None
    if saved is None or not saved.is_file():
        return sweep_config
    job = OmegaConf.load(saved)
    return OmegaConf.merge(sweep_config, {k: job[k] for k in ("model", "data", "trainer") if k in job})


def check(config: DictConfig) -> None:
    """Read the test set at the start of a sweep: a wrong path or an unreachable Hub fails in seconds,
    not after the last trial."""
    if config.get("test") is not None and config.test.source != "none" and config.get("promote") is not None and config.promote.get("enabled", True):
        data.load_test(config)


def promote(registry: "Registry", parent: "SweepRun", ranked: Sequence[JobResult], config: DictConfig, objective: str) -> Promotion:
    """Score the best job on config.test, log and register its model, move the alias if it wins.
    Jobs tied exactly on the objective are equally best: the first of them with a saved model is taken
    (an Optuna sweep keeps one model, not one per tied trial)."""
    result = Promotion()
    if config.test.source == "none":
        result.notes.append("not promoted: no test set (test=none)")
        return result
    top = ranked[0].score(objective)
    tied = [r for r in ranked if r.state == "FINISHED" and r.score(objective) == top]
    found = [(r, model_dir(r.output_dir)) for r in tied]
    best, folder = next(((r, f) for r, f in found if f is not None), (tied[0], None))
    if folder is None:
        result.notes.append(f"not promoted: the best job ({best.name}) saved no model (trainer.save_model=false?)")
        return result
    job = job_config(best, config)
    if job.model.get("source") == "random_bert" and not config.promote.get("register_random_init", False):
        result.notes.append(
            f"not promoted: model={job.model.get('name')} is a {base_model(job.model)}, a smoke test, not a model to serve "
            f"(promote.register_random_init=true registers it anyway)"
        )
        return result
    name, alias, base = registry_name(job), config.promote.alias, base_model(job.model)
    result.name = name
    champion = registry.version(name, alias)
    if champion is not None and champion.tags.get("base_model", base) != base:
        result.notes.append(
            f"not promoted: @{alias} of {name} is version {champion.version}, trained from {champion.tags['base_model']}; "
            f"this sweep trained {base}: a champion is only challenged by a model of the same base (set another promote.model_name)"
        )
        return result

    from embedsweep.run import models

    trust = bool(job.model.get("trust_remote_code", False))
    pairs = data.load_test(config)
    model = models.load_folder(folder, trust)
    evaluator = evaluate.sts_evaluator(pairs, batch_size=config.trainer.eval_batch_size)
    scored = evaluate.score_with_similarities(model, evaluator)
    result.test = names.test_scores(scored.metrics)  # test/pearson_cosine...: on the parent record and as version tags
    with tempfile.TemporaryDirectory() as tmp:  # kept for the next night's drift check (conclude/drift.py)
        kept = Path(tmp) / TEST_PAIRS_FILE
        kept.write_text(evaluate.scored_pairs(evaluator).to_json())
        parent.log_results(result.test, {}, {}, artifact=kept)

    tags = {
        "sweep_run_id": parent.run_id,
        "best_run_id": best.run_id,
        "overrides": redact(best.overrides),
        "base_model": base,
        f"validation_{objective}": f"{best.score(objective) or float('nan'):.6f}",
        "test_set": pairs.source,
        "test_fingerprint": evaluate.scored_pairs(evaluator).fingerprint,
    } | {k: f"{v:.6f}" for k, v in result.test.items()}
    version = registry.register(model, parent.run_id, name, tags)
    result.version = version.version

    if champion is None:  # the first version must not be worse than the model it started from
        base_scored = evaluate.score_with_similarities(models.build_model(job.model, seed=job.trainer.seed), evaluator)
        worse, compared = falls_short(scored.similarities, base_scored.similarities, pairs.scores, objective)
        tag, compared, moves = "vs_untouched", f"{compared} vs the untouched model", not worse
        why = f"worse beyond noise, so it does not become @{alias}" if worse else f"the first version not worse beyond noise, so it becomes @{alias}"
    else:  # a later version must beat the champion
        old = evaluate.score_with_similarities(registry.load(name, champion.version, trust), evaluator)
        diff, compared = _paired(scored.similarities, old.similarities, pairs.scores, objective)
        moves = diff.low > 0  # the rule of beats()
        tag, compared = "vs_champion", f"{compared} vs @{alias} (version {champion.version})"
        verdict = "better beyond noise" if moves else "worse beyond noise" if diff.high < 0 else "not better beyond noise"
        why = f"{verdict}, so it becomes @{alias}" if moves else f"{verdict}, so @{alias} stays on version {champion.version}"
    registry.tag_version(name, version.version, {tag: compared})
    if moves:
        registry.set_alias(name, alias, version.version)
        result.champion = True
    result.notes.append(f"registered {name} version {version.version}, {compared}: {why}")
    registry.tag_version(name, version.version, {"promotion": result.notes[-1]})
    parent.log_results({}, {}, {"promoted_model": name, "promoted_version": version.version, "promoted_champion": str(result.champion).lower()})
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
