"""A study is one search on one data version (issues 18 and 21): names made from the search and the
data, refusals that name the difference, data changes refused or moved to a new study, warm starts,
and one best said the same way in the console, optimization_results.yaml and the parent run's tags."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from embedsweep.errors import UserError
from hydra_plugins.embedsweep_optuna_sweeper._identity import Identity, choose_study, record, settings_of, warm_source, warm_start

LR = {"trainer.lr": FloatDistribution(1e-5, 1e-4, log=True), "batch": CategoricalDistribution([16, 32])}
WARMUP = {"trainer.warmup_ratio": FloatDistribution(0.0, 0.3), "batch": CategoricalDistribution([16, 32])}
DATA = {"train": "aaaa000011112222", "eval": "bbbb000011112222"}
NEW_TRAIN = {"train": "cccc000011112222", "eval": "bbbb000011112222"}


def identity(space: dict = LR, data: dict = DATA, objective: str = "pearson_cosine", settings: dict | None = None) -> Identity:
    return Identity.of(space, [objective], ["maximize"], settings or {"model": "tiny", "loss": "mnr"}, data)


def created(storage: optuna.storages.BaseStorage, name: str, ident: Identity, values: dict[float, dict[str, Any]] | None = None) -> optuna.Study:
    """A study as a sweep leaves it: its identity recorded, and COMPLETE trials with these values and params."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    record(study, ident)
    for value, params in (values or {}).items():
        dists = {k: ident_dist(ident, k, v) for k, v in params.items()}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value))
    return study


def ident_dist(ident: Identity, key: str, value: Any) -> optuna.distributions.BaseDistribution:
    if key in ident.space:
        return optuna.distributions.json_to_distribution(ident.space[key])
    return CategoricalDistribution([value])


@pytest.fixture
def storage(tmp_path: Path) -> optuna.storages.BaseStorage:
    return optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/optuna.db")


# ---------------------------------------------------------------- names


def test_two_searches_without_a_name_get_two_studies_and_the_same_search_resumes(storage) -> None:
    lr, warmup = choose_study(storage, None, "refuse", identity(LR), "search"), choose_study(storage, None, "refuse", identity(WARMUP), "search")
    assert lr != warmup and lr.startswith("search-") and "-data-" in lr
    assert choose_study(storage, None, "refuse", identity(LR), "search") == lr  # the same command again: the same study
    assert choose_study(storage, None, "refuse", identity(LR, objective="spearman_cosine"), "search") != lr
    assert choose_study(storage, None, "refuse", identity(LR, settings={"model": "minilm", "loss": "mnr"}), "search") != lr
    # the name: a readable prefix, the search's hash, the data's hash
    assert lr == f"search-{identity(LR).search_id}-data-{identity(LR).data_id}"


def test_new_data_gives_a_made_name_a_new_study_and_says_an_earlier_one_exists(storage, caplog) -> None:
    old = choose_study(storage, None, "refuse", identity(LR, DATA), "batch_warmup")
    created(storage, old, identity(LR, DATA))
    with caplog.at_level(logging.INFO):
        new = choose_study(storage, None, "refuse", identity(LR, NEW_TRAIN), "batch_warmup")
    assert new != old and new.split("-data-")[0] == old.split("-data-")[0]
    assert f"new study {new!r} for this data: study {old!r} holds the same search on other data (train changed (aaaa000011112222 -> cccc000011112222))" in caplog.text


def test_the_settings_around_the_space_are_part_of_the_search(compose) -> None:
    cfg = compose("model=tiny", "loss=cosine", "hparams_search=batch_warmup", "notify=webhook", hydra_config=True)
    settings = settings_of(cfg, {"batch": None}, ["trainer.max_steps=6", "paths.output_root=/x", "data.limit=10", "batch=16"])
    assert settings["model"] == "tiny" and settings["loss"] == "cosine" and settings["trainer.max_steps"] == "6"
    assert not {"data", "eval", "test", "tracking", "paths", "hparams_search", "notify", "batch", "paths.output_root", "data.limit"} & set(settings)
    assert settings_of(compose("model=tiny", "loss=cosine", "hparams_search=batch_warmup", hydra_config=True), {"batch": None}, []) == {
        k: v for k, v in settings.items() if k != "trainer.max_steps"
    }  # a night with a notification hook and one without: one search
    assert not any(k.startswith("hydra/") for k in settings)


# ---------------------------------------------------------------- an explicit name


def test_an_explicit_name_with_another_space_is_refused_in_one_line_naming_the_difference(storage) -> None:
    created(storage, "x", identity(LR))
    with pytest.raises(UserError) as info:
        choose_study(storage, "x", "refuse", identity(WARMUP), "search")
    assert str(info.value) == (
        "study 'x' searches trainer.lr in [1e-05, 0.0001] (log); this sweep searches trainer.warmup_ratio in [0, 0.3]: "
        "use another hydra.sweeper.study_name or leave it unset (a name is then made from the search)"
    )
    with pytest.raises(UserError, match=r"study 'x' maximizes pearson_cosine; this sweep maximizes spearman_cosine: use another"):
        choose_study(storage, "x", "refuse", identity(LR, objective="spearman_cosine"), "search")
    with pytest.raises(UserError, match=r"^this sweep also searches trainer.warmup_ratio in \[0, 0.3\]; study 'x' does not: use another"):
        choose_study(storage, "x", "refuse", identity(LR | WARMUP), "search")
    assert choose_study(storage, "x", "refuse", identity(LR), "search") == "x"  # the same search resumes


def test_an_explicit_name_on_new_data_is_refused_naming_the_option_or_moves_to_a_new_study(storage, caplog) -> None:
    created(storage, "nightly", identity(LR, DATA))
    with pytest.raises(UserError) as info:
        choose_study(storage, "nightly", "refuse", identity(LR, NEW_TRAIN), "search")
    assert str(info.value) == (
        "study 'nightly' holds trials on other data (train changed (aaaa000011112222 -> cccc000011112222)): its trials and this "
        "sweep's would not be comparable; hydra.sweeper.on_new_data=new_study starts a study for this data, =mix adds to it anyway"
    )
    with caplog.at_level(logging.INFO):
        moved = choose_study(storage, "nightly", "new_study", identity(LR, NEW_TRAIN), "search")
    assert moved == f"nightly-data-{identity(LR, NEW_TRAIN).data_id}"
    assert (
        f"data changed since study 'nightly' (train changed (aaaa000011112222 -> cccc000011112222)): this sweep starts study {moved!r} "
        "for the new data (hydra.sweeper.on_new_data=new_study)"
    ) in caplog.text
    created(storage, moved, identity(LR, NEW_TRAIN))
    caplog.clear()
    with caplog.at_level(logging.INFO):  # the next night on the same new data continues that study
        assert choose_study(storage, "nightly", "new_study", identity(LR, NEW_TRAIN), "search") == moved
    assert f"this sweep continues study {moved!r}" in caplog.text
    assert choose_study(storage, "nightly", "mix", identity(LR, NEW_TRAIN), "search") == "nightly"
    assert choose_study(storage, "nightly", "refuse", identity(LR, DATA), "search") == "nightly"  # the old data: the old study


def test_sweeper_options_of_studies_are_checked_naming_the_key() -> None:
    from hydra.errors import HydraException

    from hydra_plugins.embedsweep_optuna_sweeper._identity import check_options

    warm = OmegaConf.create({"from_study": None, "top_k": 3})
    with pytest.raises(HydraException, match=r"^hydra.sweeper.on_new_data=always is not allowed: must be one of refuse, new_study, mix$"):
        check_options(None, "always", warm)
    with pytest.raises(HydraException, match=r"^hydra.sweeper.warm_start.top_k=0 is not allowed: must be a whole number >= 1$"):
        check_options(None, "refuse", OmegaConf.create({"from_study": "auto", "top_k": 0}))
    check_options(None, "refuse", warm)


# ---------------------------------------------------------------- warm start


def test_warm_start_enqueues_the_last_studys_best_and_drops_values_outside_the_space(storage, caplog) -> None:
    wide = {"trainer.lr": FloatDistribution(1e-6, 1e-3, log=True), "batch": CategoricalDistribution([16, 32, 64])}
    old_ident = identity(wide, DATA)
    created(storage, "night1", old_ident, {
        0.70: {"trainer.lr": 5e-5, "batch": 64},    # batch 64 is outside the new space
        0.80: {"trainer.lr": 3e-5, "batch": 16},    # the best: kept whole
        0.60: {"trainer.lr": 5e-4, "batch": 32},    # lr outside [1e-5, 1e-4]
        0.10: {"trainer.lr": 2e-5, "batch": 32},    # not in the top 3
    })  # fmt: skip
    new_ident = identity(LR, NEW_TRAIN)
    assert warm_source(storage, "auto", new_ident, "night2", "db") is None  # another search: not found by auto
    assert warm_source(storage, "night1", new_ident, "night2", "db") == "night1"
    with pytest.raises(UserError, match=r"hydra.sweeper.warm_start.from_study='nope': no such study in db \(studies there: night1\); allowed: auto"):
        warm_source(storage, "nope", new_ident, "night2", "db")
    study = optuna.create_study(study_name="night2", storage=storage, direction="maximize")
    with caplog.at_level(logging.INFO):
        assert warm_start(study, storage, "night1", 3, LR) == [1, 0, 2]
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in waiting] == [{"trainer.lr": 3e-5, "batch": 16}, {"trainer.lr": 5e-5}, {"batch": 32}]
    assert [t.user_attrs["warm_start"] for t in waiting] == ["night1 trial 1", "night1 trial 0", "night1 trial 2"]
    assert "warm start: the first 3 trial(s) of study 'night2' take the best of study 'night1' (trials 1, 0, 2)" in caplog.text
    assert (
        "warm start: dropped values outside this search: batch=64 (trial 0; outside choice(16, 32)); "
        "trainer.lr=0.0005 (trial 2; outside [1e-05, 0.0001] (log))"
    ) in caplog.text
    # The first trial asked is the old best, exactly.
    trial = study.ask()
    assert (trial.suggest_float("trainer.lr", 1e-5, 1e-4, log=True), trial.suggest_categorical("batch", [16, 32])) == (3e-5, 16)


def test_auto_warm_start_finds_the_most_recent_study_of_the_same_search_on_other_data(storage) -> None:
    third = {"train": "dddd000011112222", "eval": "bbbb000011112222"}
    created(storage, "a", identity(LR, DATA))
    created(storage, "b", identity(LR, NEW_TRAIN))
    created(storage, "other", identity(WARMUP, DATA))
    assert warm_source(storage, "auto", identity(LR, third), "c", "db") == "b"
    assert warm_source(storage, "auto", identity(LR, NEW_TRAIN), "b", "db") == "a"  # never itself, nor the same data


def test_warm_start_from_the_champion_takes_its_settings_for_this_search_and_drops_the_rest(storage, caplog) -> None:
    from embedsweep.tracking import ModelVersion
    from hydra_plugins.embedsweep_optuna_sweeper._identity import warm_start_from_champion

    class Registry:
        def __init__(self, tags: dict | None) -> None:
            self.tags = tags

        def version(self, name: str, alias: str) -> ModelVersion | None:
            return None if self.tags is None else ModelVersion(name, "3", self.tags)

    study = optuna.create_study(study_name="night2", storage=storage, direction="maximize")
    tags = {"overrides": "hparams_search=batch_warmup model=minilm batch=64 trainer.lr=3e-05 trainer.warmup_ratio=0.1 trial=4"}
    with caplog.at_level(logging.INFO):
        assert warm_start_from_champion(study, Registry(tags), "minilm-nli", "champion", LR) == "minilm-nli@champion v3"
    (waiting,) = study.get_trials(states=(TrialState.WAITING,))
    assert waiting.system_attrs["fixed_params"] == {"trainer.lr": 3e-05}  # batch 64 is outside; warmup_ratio is not searched
    assert "warm start: dropped values outside this search: batch=64 (minilm-nli@champion v3; outside choice(16, 32))" in caplog.text
    assert "warm start: the next trial of study 'night2' takes the settings of minilm-nli@champion v3 (trainer.lr=3e-05)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert warm_start_from_champion(study, Registry(None), "minilm-nli", "champion", LR) == ""
    assert "warm start: no minilm-nli@champion registered yet; nothing to start from" in caplog.text


# ---------------------------------------------------------------- the data version


def test_the_data_version_is_the_fingerprints_runs_record_and_follows_the_content(compose, tmp_path: Path) -> None:
    from embedsweep.run.data import data_version, load_run_data

    cfg = compose("model=tiny")
    version = data_version(cfg)
    assert version == {k: v for k, v in load_run_data(cfg).fingerprints.items() if k in ("train", "eval")}
    assert data_version(compose("model=tiny", "data.limit=200")) != version  # other rows, another version
    assert data_version(compose("model=tiny", "data.limit=200"))["eval"] == version["eval"]


# ---------------------------------------------------------------- one best


class FakeParent:
    """The parent run's seam (tracking.SweepRun): what the sweeper logged to it."""

    run_id, job_overrides = "p", []

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}
        self.params: dict[str, Any] = {}
        self.tags: dict[str, Any] = {}

    def log_results(self, metrics, params, tags, artifact=None) -> None:  # noqa: ANN001
        self.metrics |= dict(metrics)
        self.params |= dict(params)
        self.tags |= dict(tags)


def test_after_a_resume_the_console_the_results_file_and_the_tags_name_the_same_best(tmp_path: Path, caplog) -> None:
    from hydra_plugins.embedsweep_optuna_sweeper._impl import Tally, report
    from hydra_plugins.embedsweep_optuna_sweeper.config import OptunaSweeperConf

    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/o.db", direction="maximize")
    dist = {"trainer.lr": FloatDistribution(1e-5, 1e-4, log=True)}
    for value, lr in ((0.45, 2e-5), (0.47, 3e-5), (0.40, 9e-5), (0.4803, 4e-5), (0.46, 6e-5), (0.4790, 7.498e-05)):
        study.add_trial(optuna.trial.create_trial(params={"trainer.lr": lr}, distributions=dist, value=value))
    tally = Tally()
    for _ in range(2):
        tally.add(TrialState.COMPLETE)
    opts = OptunaSweeperConf(storage=f"sqlite:///{tmp_path}/o.db", sampler={}, pruner={})
    parent = FakeParent()
    with caplog.at_level(logging.INFO):
        results = report(study, opts, ["pearson_cosine"], tally, tmp_path, parent, mine=[4, 5])  # resumed: trials 4 and 5 are this sweep's
    lines = [r.getMessage() for r in caplog.records]
    assert "best of this sweep: trial 5, pearson_cosine=0.4790 with {'trainer.lr': 7.498e-05}" in lines
    assert "best of study 's', earlier sweeps included: trial 3, pearson_cosine=0.4803 with {'trainer.lr': 4e-05}" in lines
    on_disk = OmegaConf.to_container(OmegaConf.load(tmp_path / "optimization_results.yaml"))
    assert on_disk == results
    assert (on_disk["best_trial"], on_disk["best_value"], on_disk["best_params"]) == (5, 0.4790, {"trainer.lr": 7.498e-05})
    assert on_disk["best_of_study"] == {"trial": 3, "value": 0.4803, "params": {"trainer.lr": 4e-05}}
    assert (parent.tags["best_trial_this_sweep"], parent.tags["best_trial_study"]) == (5, 3) and "best_trial" not in parent.tags
    assert (parent.metrics["best_pearson_cosine"], parent.metrics["study_best_pearson_cosine"]) == (0.4790, 0.4803)
    assert parent.params == {"best.trainer.lr": 7.498e-05}

    caplog.clear()
    with caplog.at_level(logging.INFO):  # when this sweep holds the study's best, one line says both
        report(study, opts, ["pearson_cosine"], tally, tmp_path, parent, mine=[3, 4])
    assert "best trial 3, of this sweep and of study 's': pearson_cosine=0.4803 with {'trainer.lr': 4e-05}" in caplog.text
    assert "best of study" not in caplog.text


# ---------------------------------------------------------------- the real command


@pytest.mark.slow
def test_the_command_refuses_new_data_for_a_named_study_then_moves_on_warm_and_keeps_searches_apart(train_cmd, mlflow_runs, tmp_path: Path) -> None:
    quick = ["model=tiny", "trainer.max_steps=2", "trainer.eval_steps=2", "trainer.logging_steps=2", "trainer.lr=1e-3",
             "trainer.save_model=false", "test=none", "hydra/sweeper/pruner=none"]  # fmt: skip
    nightly = ["-m", "hparams_search=batch_warmup", *quick, "hydra.sweeper.study_name=nightly"]
    storage = f"sqlite:///{tmp_path}/outputs/optuna.db"

    first = train_cmd(*nightly, "data.limit=300", "hydra.sweeper.n_trials=2")
    assert first.returncode == 0, first.stderr[-3000:]
    old = optuna.load_study(study_name="nightly", storage=storage)
    assert old.user_attrs["data"]["train"] != "" and set(old.user_attrs["search"]["space"]) == {"batch", "trainer.warmup_ratio"}

    appended = train_cmd(*nightly, "data.limit=400", "hydra.sweeper.n_trials=1")  # more training rows: another data version
    assert appended.returncode == 2
    last = appended.stderr.strip().splitlines()[-1]
    assert last.startswith("error: study 'nightly' holds trials on other data (train changed (")
    assert last.endswith("hydra.sweeper.on_new_data=new_study starts a study for this data, =mix adds to it anyway")
    assert len(old.trials) == len(optuna.load_study(study_name="nightly", storage=storage).trials) == 2  # nothing added
    assert len([r for r in mlflow_runs() if r.data.tags.get("embedsweep.role") == "sweep"]) == 1  # and no parent run left

    moved = train_cmd(*nightly, "data.limit=400", "hydra.sweeper.n_trials=1", "hydra.sweeper.on_new_data=new_study", "hydra.sweeper.warm_start.from_study=auto")
    assert moved.returncode == 0, moved.stderr[-3000:]
    out = moved.stdout + moved.stderr
    new_name = next(n for n in optuna.get_all_study_names(storage) if n.startswith("nightly-data-"))
    assert f"data changed since study 'nightly' (train changed ({old.user_attrs['data']['train']} -> " in out
    assert f"this sweep starts study {new_name!r} for the new data (hydra.sweeper.on_new_data=new_study)" in out
    best = old.best_trial
    assert f"warm start: the first 2 trial(s) of study {new_name!r} take the best of study 'nightly' (trials {best.number}, " in out
    (trial, *_) = optuna.load_study(study_name=new_name, storage=storage).trials
    assert trial.params == best.params and trial.user_attrs["warm_start"] == f"nightly trial {best.number}"
    parent = [r for r in mlflow_runs() if r.data.tags.get("embedsweep.role") == "sweep"][-1]
    tags = parent.data.tags
    assert (tags["study_name"], tags["data_version"]) == (new_name, new_name.split("-data-")[1])
    assert tags["fingerprint.train"] != old.user_attrs["data"]["train"] and tags["fingerprint.eval"] == old.user_attrs["data"]["eval"]
    assert tags["warm_start"].startswith(f"nightly trials {best.number},")

    other = train_cmd("-m", "hydra/sweeper=optuna", *quick, "trainer.warmup_ratio=interval(0,0.3)", "hydra.sweeper.n_trials=1")
    assert other.returncode == 0, other.stderr[-3000:]
    assert len(optuna.get_all_study_names(storage)) == 3  # another search, without a name: a study of its own
    mixed = train_cmd("-m", "hydra/sweeper=optuna", *quick, "trainer.warmup_ratio=interval(0,0.3)", "hydra.sweeper.study_name=nightly")
    assert mixed.returncode == 2
    assert mixed.stderr.strip().splitlines()[-1] == (
        "error: study 'nightly' also searches batch in choice(16, 32, 64, 128, 256); this sweep does not: "
        "use another hydra.sweeper.study_name or leave it unset (a name is then made from the search)"
    )


@pytest.mark.slow
def test_after_a_real_resume_the_console_results_file_tags_and_best_run_id_agree(train_cmd, mlflow_runs, tmp_path: Path) -> None:
    sweep = ["-m", "hydra/sweeper=optuna", "model=tiny", "trainer.max_steps=2", "trainer.eval_steps=2", "trainer.logging_steps=2",
             "trainer.save_model=false", "test=none", "hydra/sweeper/pruner=none", "trainer.lr=tag(log,interval(1e-6,1e-2))"]  # fmt: skip
    first = train_cmd(*sweep, "hydra.sweeper.n_trials=1")
    assert first.returncode == 0, first.stderr[-3000:]
    storage = f"sqlite:///{tmp_path}/outputs/optuna.db"
    study = optuna.load_study(study_name=None, storage=storage)
    # An earlier invocation's trial that this one cannot beat: the study's best stays there.
    lr = FloatDistribution(1e-6, 1e-2, log=True)
    study.add_trial(optuna.trial.create_trial(params={"trainer.lr": 1e-4}, distributions={"trainer.lr": lr}, value=0.99))
    resumed = train_cmd(*sweep, "hydra.sweeper.n_trials=1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out = resumed.stdout + resumed.stderr
    (mine,) = [t for t in optuna.load_study(study_name=None, storage=storage).trials if t.number == 2]
    assert f"best of this sweep: trial 2, pearson_cosine={mine.value:.4f}" in out
    assert f"best of study {study.study_name!r}, earlier sweeps included: trial 1, pearson_cosine=0.9900 with {{'trainer.lr': 0.0001}}" in out
    assert f"best: trainer.lr={mine.params['trainer.lr']!r} (pearson_cosine {mine.value:.4f}" in out  # the verdict's best
    results = OmegaConf.load(sorted((tmp_path / "outputs" / "multiruns").glob("*/*/optimization_results.yaml"))[-1])
    assert (results.best_trial, results.best_of_study.trial) == (2, 1)
    runs = mlflow_runs()
    parent = [r for r in runs if r.data.tags.get("embedsweep.role") == "sweep"][-1]
    (best_run,) = [r for r in runs if r.info.run_id == parent.data.tags["best_run_id"]]
    assert (best_run.data.tags["trial_number"], parent.data.tags["best_trial_this_sweep"], parent.data.tags["best_trial_study"]) == ("2", "2", "1")
    assert parent.data.metrics["best_pearson_cosine"] == pytest.approx(mine.value) and parent.data.metrics["study_best_pearson_cosine"] == 0.99
