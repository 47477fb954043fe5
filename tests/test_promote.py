"""The held-out test set and the promotion of a sweep's winner: test scores never reach the trials,
the winner is registered, and `champion` moves only for a gain beyond noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedsweep.errors import UserError

QUICK = ["model=tiny", "trainer.max_steps=2", "trainer.eval_steps=2", "trainer.warmup_steps=0", "test.limit=60"]
# Metrics of the test set, all in the test/ section: a single run logs them, a sweep's job none (its
# counts of pairs shared with the test set are sets/overlap_*).
TEST_SCORES = ("test/",)


def test_a_single_run_scores_the_test_set_with_its_noise(train_cmd, mlflow_runs, compose) -> None:
    proc = train_cmd(*QUICK)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = mlflow_runs()
    m = run.data.metrics
    assert m["test/pairs"] == 60
    for name in ("pearson_cosine", "spearman_cosine"):
        for low, value, high in [
            ("interval/{0}_low", "answer/{0}", "interval/{0}_high"), ("test/{0}_low", "test/{0}", "test/{0}_high"),
            ("baseline/{0}_low", "baseline/{0}", "baseline/{0}_high"), ("test/baseline_{0}_low", "test/baseline_{0}", "test/baseline_{0}_high"),
        ]:  # fmt: skip
            low, value, high = (m[k.format(name)] for k in (low, value, high))
            assert -1 <= low < value < high <= 1, (name, low, value, high)
    assert m["test/gain_pearson_cosine_low"] < m["test/gain_pearson_cosine_high"]  # the objective's gain over the untouched model
    # The test scores are the saved model's on the 60 test pairs (not the eval pairs): scored again here, they agree.
    from sentence_transformers import SentenceTransformer

    from embedsweep.run import data, evaluate

    model = SentenceTransformer(str(Path(run.data.tags["hydra_output_dir"]) / "model"))
    cfg = compose(*QUICK)
    tested = evaluate.score(model, evaluate.sts_evaluator(data.load_sts(cfg.test, "test"), batch_size=cfg.trainer.eval_batch_size))
    for name in ("pearson_cosine", "spearman_cosine"):
        assert tested[name] == pytest.approx(m[f"test/{name}"], abs=1e-5), name


def test_the_hub_test_set_fails_fast_offline_naming_the_local_alternative(compose) -> None:
    from embedsweep.run import data

    cfg = compose("test=stsb")
    assert (cfg.test.path, cfg.test.split, cfg.test.max_score) == ("sentence-transformers/stsb", "test", 1.0)
    with pytest.raises(UserError, match=r"sentence-transformers/stsb.*offline alternative: test=local test.path="):
        data.load_sts(cfg.test, "test")


def test_the_packaged_test_set_is_the_cc_by_sa_stsb_train_pairs(compose) -> None:
    from embedsweep.run import data

    pairs = data.load_sts(compose().test, "test")
    assert len(pairs.scores) == 1000 and pairs.sentence1[0] == "Two green and white trains sitting on the tracks."
    assert pairs.scores[0] == pytest.approx(4.4 / 5)


def test_the_alias_moves_only_for_a_gain_beyond_noise() -> None:
    from embedsweep.conclude.promote import beats

    rng = np.random.default_rng(0)
    gold = rng.random(800)
    champion = gold + 0.6 * rng.standard_normal(800)
    much_better = gold + 0.2 * rng.standard_normal(800)
    as_good = gold + 0.6 * rng.standard_normal(800)  # another model of the same quality: a coin flip which scores higher
    assert beats(much_better, champion, gold, "pearson_cosine")[0]
    better, why = beats(as_good, champion, gold, "spearman_cosine")
    assert not better and "paired 95% interval [-" in why
    assert not beats(champion, champion, gold, "pearson_cosine")[0]  # a tie keeps the champion


def test_a_first_version_worse_than_the_untouched_model_beyond_noise_is_not_champion() -> None:
    from embedsweep.conclude.promote import falls_short

    rng = np.random.default_rng(1)
    gold = rng.random(800)
    untouched = gold + 0.2 * rng.standard_normal(800)
    harmed = gold + 0.6 * rng.standard_normal(800)  # fine-tuning made it worse, clearly
    as_good = gold + 0.2 * rng.standard_normal(800)
    worse, why = falls_short(harmed, untouched, gold, "pearson_cosine")
    assert worse and why.startswith("test pearson_cosine ") and "paired 95% interval [-" in why
    assert not falls_short(as_good, untouched, gold, "pearson_cosine")[0]  # within noise: it may lead
    assert not falls_short(untouched, harmed, gold, "spearman_cosine")[0]  # better is never worse


def test_the_untouched_model_is_rebuilt_from_the_best_jobs_own_config(compose, tmp_path: Path) -> None:
    import torch
    from omegaconf import OmegaConf

    from embedsweep.conclude.promote import job_config
    from embedsweep.conclude.verdict import JobResult
    from embedsweep.run import models

    def untouched_model(folder: Path, sweep):  # noqa: ANN001, ANN202 - as promote() rebuilds it
        job = job_config(JobResult("j", {}, "FINISHED", {}, 1.0, "r", output_dir=str(folder.parent)), sweep)
        return models.build_model(job.model, seed=job.trainer.seed)

    job = compose("model=tiny", "trainer.seed=7")
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(job, tmp_path / ".hydra" / "config.yaml")
    sweep = compose("model=tiny", "trainer.seed=8")  # the sweep's own config: not the job's seed
    rebuilt = untouched_model(tmp_path / "model", sweep)
    same = models.build_model(job.model, seed=7)
    for a, b in zip(rebuilt.state_dict().values(), same.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    other = models.build_model(job.model, seed=8)
    assert not all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), other.state_dict().values(), strict=True))
    without_job_config = untouched_model(tmp_path / "elsewhere" / "model", sweep)  # falls back to the sweep's
    assert all(torch.equal(a, b) for a, b in zip(without_job_config.state_dict().values(), other.state_dict().values(), strict=True))


def _registry(tmp_path: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/outputs/mlflow.db")


@pytest.mark.slow
def test_a_grid_sweep_promotes_its_winner_and_a_second_one_does_not_move_the_champion(train_cmd, mlflow_runs, compose, tmp_path: Path) -> None:
    grid = ["-m", *QUICK, "trainer.lr=1e-3,1e-4", "promote.register_random_init=true"]  # a tiny model: registered only when asked
    first = train_cmd(*grid)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "vs the untouched model: the first version not worse beyond noise, so it becomes @champion" in first.stdout
    runs = mlflow_runs()
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2
    assert [k for r in children for k in r.data.metrics if k.startswith(TEST_SCORES)] == []  # trials never score the test set
    assert {"test/pearson_cosine", "test/spearman_cosine"} <= parent.data.metrics.keys()  # the winner, once

    registry = _registry(tmp_path)
    champion = registry.get_model_version_by_alias("tiny-nli", "champion")  # named for its model and task
    assert str(champion.version) == "1"
    assert champion.tags["base_model"] == "random-init tiny (2 layers, 32 wide)"
    assert champion.tags["sweep_run_id"] == parent.info.run_id
    assert champion.tags["best_run_id"] == parent.data.tags["best_run_id"]
    assert champion.tags["overrides"] == next(c.data.tags["overrides"] for c in children if c.info.run_id == parent.data.tags["best_run_id"])
    assert float(champion.tags["validation_pearson_cosine"]) == pytest.approx(parent.data.metrics["best_objective"], abs=1e-6)
    assert float(champion.tags["test/pearson_cosine"]) == pytest.approx(parent.data.metrics["test/pearson_cosine"], abs=1e-6)
    assert champion.tags["vs_untouched"].startswith("test pearson_cosine ")

    # The documented line loads the champion, and it reproduces its logged test score.
    import mlflow
    import mlflow.sentence_transformers

    from embedsweep.run import data, evaluate

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    model = mlflow.sentence_transformers.load_model("models:/tiny-nli@champion")
    pairs = data.load_sts(compose("test.limit=60").test, "test")
    scored = evaluate.score(model, evaluate.sts_evaluator(pairs, batch_size=32))
    assert scored["pearson_cosine"] == pytest.approx(parent.data.metrics["test/pearson_cosine"], abs=1e-5)

    # The same sweep again: the same winner, no better beyond noise, so version 2 stays without the alias.
    second = train_cmd(*grid)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "registered tiny-nli version 2" in second.stdout and "so @champion stays on version 1" in second.stdout
    assert str(registry.get_model_version_by_alias("tiny-nli", "champion").version) == "1"
    version2 = registry.get_model_version("tiny-nli", "2")
    assert not version2.aliases and "+0.0000" in version2.tags["vs_champion"]


@pytest.mark.slow
def test_optuna_trials_keep_one_model_and_the_winner_is_promoted(train_cmd, mlflow_runs, tmp_path: Path) -> None:
    proc = train_cmd("-m", "hparams_search=batch_warmup", *QUICK, "hydra.sweeper.n_trials=3", "batch=choice(8,16)", "hydra/sweeper/pruner=none", "promote.model_name=smoke", "promote.register_random_init=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    models = sorted((tmp_path / "outputs" / "multiruns").glob("*/*/*/model"))
    assert len(models) == 1  # the best trial's; the others were deleted after their batch
    runs = mlflow_runs()
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 3 and [k for r in children for k in r.data.metrics if k.startswith(TEST_SCORES)] == []
    assert parent.data.tags["promoted_version"] == "1" and "test/pearson_cosine" in parent.data.metrics
    champion = _registry(tmp_path).get_model_version_by_alias("smoke", "champion")  # an explicit name
    assert str(champion.version) == "1"
    (promoted,) = [r for r in children if r.info.run_id == champion.tags["best_run_id"]]
    assert Path(promoted.data.tags["hydra_output_dir"], "model") == models[0]  # the one model kept is the one promoted
    assert promoted.data.metrics["answer/pearson_cosine"] == max(r.data.metrics["answer/pearson_cosine"] for r in children)


def test_a_local_test_set_without_a_path_is_one_clear_error(compose) -> None:
    from embedsweep.checks import config

    with pytest.raises(UserError, match=r"^test=local needs a file: pass test.path=path/to/file"):
        config.validate(compose("test=local"))


def test_a_sweep_with_an_unreachable_test_set_fails_before_any_job(train_cmd, tmp_path: Path) -> None:
    proc = train_cmd("-m", "model=tiny", "trainer.max_steps=1", "batch=8,16", "test=local", "test.path=missing.tsv")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: data file not found: missing.tsv (test.path)"
    assert not (tmp_path / "outputs" / "multiruns").exists() or not list((tmp_path / "outputs" / "multiruns").glob("*/*/0"))


def _gold_and_old(n: int = 1000):
    rng = np.random.default_rng(3)
    gold = rng.random(n)
    return gold, gold + 0.5 * rng.standard_normal(n)


def test_a_model_identical_to_the_old_one_neither_falls_short_nor_beats_it() -> None:
    """The same similarities on every pair: the paired interval is exactly [0, 0].
    Kills: falls_short as `diff.high <= 0` (an untouched-equal first version refused the alias);
    beats as `diff.low >= 0` (a copy of the champion taking the alias)."""
    from embedsweep.conclude.promote import beats, falls_short

    gold, old = _gold_and_old()
    for metric in ("pearson_cosine", "spearman_cosine"):
        worse, why = falls_short(old.copy(), old, gold, metric)
        better, same_why = beats(old.copy(), old, gold, metric)
        assert (worse, better) == (False, False), metric
        assert why == same_why and why.endswith("on the same pairs, +0.0000 (paired 95% interval [+0.0000, +0.0000])")
    assert falls_short(old, old, gold, "pearson_cosine")[1] == (
        "test pearson_cosine 0.4844 against 0.4844 on the same pairs, +0.0000 (paired 95% interval [+0.0000, +0.0000])"
    )


def test_a_barely_better_model_beats_and_a_barely_worse_one_falls_short() -> None:
    """Each similarity moved 1% of the way towards (away from) gold: +0.0039 (-0.0039) pearson, far
    inside either model's own 95% interval (about ±0.05 on 1,000 pairs), yet consistent on every pair,
    so the paired interval lies wholly above (below) zero.
    Kills: beats/falls_short comparing the two models' own intervals instead of the paired difference;
    a margin (`diff.low > 0.005`); the difference taken the wrong way round (`difference_interval(old, new, ...)`).
    (beats as `diff.high > 0` and falls_short as `diff.low < 0` are killed by the as-good cases above.)"""
    from embedsweep.run import noise
    from embedsweep.conclude.promote import beats, falls_short

    gold, old = _gold_and_old()
    better, worse = old + 0.01 * (gold - old), old - 0.01 * (gold - old)
    own = noise.intervals(old, gold)["pearson_cosine"]
    assert own.overlaps(noise.intervals(better, gold)["pearson_cosine"]) and own.overlaps(noise.intervals(worse, gold)["pearson_cosine"])

    assert beats(better, old, gold, "pearson_cosine") == (
        True, "test pearson_cosine 0.4883 against 0.4844 on the same pairs, +0.0039 (paired 95% interval [+0.0036, +0.0042])"
    )  # fmt: skip
    assert falls_short(better, old, gold, "pearson_cosine")[0] is False
    assert falls_short(worse, old, gold, "pearson_cosine") == (
        True, "test pearson_cosine 0.4806 against 0.4844 on the same pairs, -0.0039 (paired 95% interval [-0.0042, -0.0035])"
    )  # fmt: skip
    assert beats(worse, old, gold, "pearson_cosine")[0] is False
    assert (beats(better, old, gold, "spearman_cosine")[0], falls_short(worse, old, gold, "spearman_cosine")[0]) == (True, True)


class _Chosen(Exception):
    pass


def _promote_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jobs: list) -> tuple[object, str | None]:
    """promote() over `jobs` (name, state, score, saved a model?) with a stand-in MLflow client; stops at
    the model it would load. Returns (its Promotion or None, the chosen model folder or None)."""
    from types import SimpleNamespace

    import sentence_transformers
    from omegaconf import OmegaConf

    from embedsweep.conclude import promote
    from embedsweep.conclude.verdict import JobResult, rank

    folders = {}
    for name, _, _, saved in jobs:
        folders[name] = tmp_path / name
        if saved:
            (tmp_path / name / "model").mkdir(parents=True)
            (tmp_path / name / "model" / "modules.json").write_text("[]")
    registry = SimpleNamespace(version=lambda name, alias: None)
    parent = SimpleNamespace(run_id="parent", log_results=lambda *a, **k: None)
    results = [JobResult(name, {}, state, {"pearson_cosine": score}, 1.0, run_id=name, output_dir=str(folders[name])) for name, state, score, _ in jobs]
    config = OmegaConf.create({
        "promote": {"model_name": "m", "alias": "champion"}, "test": {"source": "packaged"}, "trainer": {"eval_batch_size": 8},
        "model": {"name": "minilm", "source": "packaged"}, "data": {"kind": "nli"},
    })  # fmt: skip
    monkeypatch.setattr(promote.data, "load_test", lambda config: None)

    def chosen(folder: str, **kwargs: object) -> None:  # load_folder passes trust_remote_code=False
        raise _Chosen(Path(folder).parent.name)

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", chosen)
    try:
        return promote.promote(registry, parent, rank(results, "pearson_cosine"), config, "pearson_cosine"), None
    except _Chosen as exc:
        return None, str(exc)


def test_pruned_and_failed_jobs_are_never_promoted_even_when_they_score_as_high(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pruned trial and a failed job reached the best's score (0.80), and they kept a model where the
    best did not: nothing is promoted. With a second finished job on that score and a model, that one is.
    Kills: promote() taking every job tied on the score (`r.state == "FINISHED" and` dropped from `tied`)."""
    jobs = [("a", "FINISHED", 0.80, False), ("b", "FINISHED", 0.70, True), ("p", "PRUNED", 0.80, True), ("f", "FAILED", 0.80, True), ("k", "KILLED", 0.90, True)]
    result, folder = _promote_once(tmp_path / "1", monkeypatch, jobs)
    assert folder is None and result.notes == ["not promoted: the best job (a) saved no model (trainer.save_model=false?)"]
    assert (result.version, result.champion) == (None, False)

    result, folder = _promote_once(tmp_path / "2", monkeypatch, [*jobs, ("z", "FINISHED", 0.80, True)])
    assert (result, folder) == (None, "z")  # the finished job tied with the best, not the pruned or failed one


def _run_in_process(compose, tmp_path: Path, mode: str) -> tuple[float, dict[str, float]]:
    """app.run() of a 2-step tiny job with the packaged test set, as a job of a single run (RUN) or of a
    sweep (MULTIRUN) sees it: (the value it returns to the sweeper, its MLflow run's metrics)."""
    import os

    from hydra.core.hydra_config import HydraConfig
    from mlflow import MlflowClient
    from omegaconf import OmegaConf

    from embedsweep import app

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = [*QUICK, "trainer.save_model=false", f"tracking.uri={uri}", f"paths.output_root={tmp_path}"]
    hydra_cfg = compose(*overrides, hydra_config=True)
    OmegaConf.update(hydra_cfg, "hydra.runtime.output_dir", str(tmp_path / mode), force_add=True)
    OmegaConf.update(hydra_cfg, "hydra.mode", mode, force_add=True)
    OmegaConf.update(hydra_cfg, "hydra.job.num", 0, force_add=True)
    cfg = compose(*overrides)
    assert cfg.test.source != "none"  # a test set is configured
    umask = os.umask(0o022)
    os.umask(umask)
    HydraConfig.instance().set_config(hydra_cfg)
    try:
        value = app.run(cfg)
    finally:
        HydraConfig.instance().cfg = None
        os.umask(umask)  # app.run sets the job's umask
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id], filter_string=f"tags.hydra_output_dir LIKE '%{mode}'")
    return value, run.data.metrics


def test_optuna_is_told_the_eval_score_even_with_a_test_set(compose, tmp_path: Path) -> None:
    """With a test set configured, a job returns (and the sweeper tells Optuna) its eval objective; a
    sweep's job does not even score the test set. Kills: app.run returning the test score
    (`objective(tested.metrics, ...)`); the sweep guard dropped (`score_test = cfg.test.source != "none"`)."""
    import optuna
    from hydra.core.utils import JobReturn, JobStatus

    from hydra_plugins.embedsweep_optuna_sweeper._impl import tell

    single, metrics = _run_in_process(compose, tmp_path, "RUN")
    assert metrics["test/pairs"] == 60 and metrics["test/pearson_cosine"] != pytest.approx(metrics["answer/pearson_cosine"], abs=1e-6)
    assert single == metrics["answer/pearson_cosine"]  # the eval score, not test/pearson_cosine

    value, metrics = _run_in_process(compose, tmp_path, "MULTIRUN")
    # The sweep's job never scored the test set (it still reads it, to leave its pairs out of training).
    assert [k for k in metrics if k.startswith(TEST_SCORES)] == []
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    result = JobReturn(overrides=[], cfg=None, hydra_cfg=None, working_dir=str(tmp_path), task_name="train")
    result.status, result.return_value = JobStatus.COMPLETED, value
    assert tell(study, trial, result, 1) == optuna.trial.TrialState.COMPLETE
    assert study.trials[0].value == value == metrics["answer/pearson_cosine"]
