"""The Optuna sweeper (hydra/sweeper=optuna): discovery, search space, study bookkeeping, and real
sweeps on CPU with model=tiny: resume, budget, pruning, failures, concurrency (SQLite, PostgreSQL)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from conftest import OFFLINE_ENV, ROOT, require_module, write_local_files
from hydra_plugins.embedsweep_optuna_sweeper._impl import SearchSpace, Tally, ask, open_study, tell
from hydra_plugins.embedsweep_optuna_sweeper.config import OptunaSweeperConf, check_options

# Six steps, evaluated every two: each trial takes about a second on CPU.
QUICK = ["model=tiny", "trainer.max_steps=6", "trainer.eval_steps=2", "trainer.logging_steps=2", "trainer.lr=1e-3", "trainer.save_model=false"]
SPACE = ["batch=choice(16,32)", "trainer.warmup_ratio=interval(0,0.3)"]
SWEEP = ["-m", "hparams_search=batch_warmup", *QUICK, *SPACE]


PRESETS = ROOT / "conf" / "hydra" / "sweeper"


def options(**overrides: object) -> OptunaSweeperConf:
    """The sweeper's checked options: the default presets (sampler tpe, pruner median), as
    conf/hydra/sweeper/ has them, with `overrides` replacing whole keys."""
    given = {"storage": "sqlite:///unused.db", "sampler": OmegaConf.load(PRESETS / "sampler" / "tpe.yaml"),
             "pruner": OmegaConf.load(PRESETS / "pruner" / "median.yaml")}  # fmt: skip
    return check_options(given | overrides)


def load(storage: str, name: str | None = "s") -> optuna.Study:
    """The study `name`; None: the one study in the storage (a sweep without study_name makes its name)."""
    return optuna.load_study(study_name=name, storage=storage)


def results_of(tmp_path: Path) -> list[dict]:
    """optimization_results.yaml of every sweep under tmp_path/outputs, oldest first."""
    files = sorted((tmp_path / "outputs" / "multiruns").glob("*/*/optimization_results.yaml"))
    return [OmegaConf.to_container(OmegaConf.load(f)) for f in files]


# ---------------------------------------------------------------- fast: discovery, config, parsing, bookkeeping


def test_hydra_discovers_the_plugin_and_its_config() -> None:
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    names = {f"{p.__module__}.{p.__name__}" for p in Plugins.instance().discover(Sweeper)}
    assert "hydra_plugins.embedsweep_optuna_sweeper.optuna_sweeper.OptunaSweeper" in names
    assert "optuna.yaml" in ConfigStore.instance().list("hydra/sweeper")


def test_the_preset_selects_the_sweeper_and_searches_batch_and_warmup(compose) -> None:
    cfg = compose("hparams_search=batch_warmup", "loss=cosine", hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert dict(sweeper.params) == {"batch": "choice(16,32,64,128,256)", "trainer.warmup_ratio": "interval(0.0,0.3)"}
    assert (sweeper.direction, cfg.objective, cfg.trainer.save_model, cfg.trial) == ("maximize", "pearson_cosine", True, None)
    assert sweeper.study_name is None  # named after the search and the data when the sweep starts (docs/optuna.md#studies)
    # Pruning needs intermediate evaluations, and must not judge a trial before the default run's warmup is over.
    assert cfg.trainer.eval_steps == 5 and sweeper.pruner.n_warmup_steps == 10 and cfg.trainer.warmup_steps is None
    assert sweeper.storage == f"sqlite:///{cfg.paths.output_root}/optuna.db"


def test_the_preset_also_searches_the_warmup_ratio_over_a_recipe(compose, tmp_path: Path) -> None:
    from embedsweep.checks.config import validate

    # The recipe's data files, written into a tmp paths.data_dir: no ../shared/data needed.
    cfg = compose("experiment=recipe_mnr_offline", "hparams_search=batch_warmup", "trainer.warmup_ratio=0.2", f"paths.data_dir={tmp_path}")
    assert write_local_files(cfg)
    validate(cfg)  # the recipe's warmup_steps is cleared by the preset: exactly one warmup applies
    assert (cfg.trainer.warmup_ratio, cfg.trainer.warmup_steps) == (0.2, None)


def test_search_space_from_hydra_override_syntax() -> None:
    params = {"batch": "choice(16,32)", "trainer.warmup_steps": "int(interval(0,500))", "trainer.lr": "tag(log, interval(1e-6,1e-4))"}
    space = SearchSpace.parse(params, ["loss=mnr,cosine", "trainer.eval_steps=range(10,40,10)", "model=tiny", "batch=choice(8,64)"])
    d = space.distributions
    assert d["batch"] == CategoricalDistribution([8, 64])  # the command line wins over the preset
    assert list(d)[0] == "batch"  # ... and keeps the key's place
    assert d["trainer.warmup_steps"] == IntDistribution(0, 500)
    assert d["trainer.lr"] == FloatDistribution(1e-6, 1e-4, log=True)
    assert d["loss"] == CategoricalDistribution(["mnr", "cosine"])
    assert d["trainer.eval_steps"] == IntDistribution(10, 30, step=10)
    assert space.fixed == ["model=tiny"]
    chosen = space.overrides({"batch": 64, "trainer.warmup_steps": 7, "trainer.lr": 3e-5, "loss": "cosine", "trainer.eval_steps": 20})
    assert chosen == ["model=tiny", "batch=64", "trainer.warmup_steps=7", "trainer.lr=3e-05", "loss=cosine", "trainer.eval_steps=20"]


def test_grid_space_lists_every_point_and_refuses_continuous_dimensions() -> None:
    assert SearchSpace.parse({"batch": "choice(16,32)", "x": "range(0,3)"}, []).grid() == {"batch": [16, 32], "x": [0, 1, 2]}
    from hydra.errors import HydraException

    with pytest.raises(HydraException, match="sampler=grid needs"):
        SearchSpace.parse({"lr": "interval(0.1,0.2)"}, []).grid()


@pytest.mark.parametrize(
    ("states", "rate", "fails"),
    [(["COMPLETE", "FAIL"], 0.5, False), (["COMPLETE", "FAIL", "FAIL"], 0.5, True), (["FAIL"], 1.0, True),
     (["PRUNED", "PRUNED", "FAIL"], 0.5, False), ([], 0.5, False)],
)  # fmt: skip
def test_the_command_fails_only_when_too_many_trials_failed(states: list[str], rate: float, fails: bool) -> None:
    tally = Tally()
    for s in states:
        tally.add(TrialState[s])
    assert (tally.failure(rate) is not None) == fails


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"max_trials": 0}, "hydra.sweeper.max_trials=0 is not allowed: must be null (no budget) or a whole number >= 1"),
        ({"n_trials": 0}, "hydra.sweeper.n_trials=0 is not allowed: must be a whole number >= 1"),
        ({"pruner": {"_target_": "optuna.pruners.Sometimes"}}, "hydra.sweeper.pruner._target_=optuna.pruners.Sometimes is not allowed: "
         "must be an Optuna pruner class (a subclass of optuna.pruners.BasePruner), such as optuna.pruners.MedianPruner"),
        ({"sampler": {"_target_": "optuna.pruners.MedianPruner"}}, "hydra.sweeper.sampler._target_=optuna.pruners.MedianPruner is not allowed: "
         "must be an Optuna sampler class (a subclass of optuna.samplers.BaseSampler), such as optuna.samplers.TPESampler"),
        ({"pruner": {"name": "median"}}, "hydra.sweeper.pruner={'name': 'median'} is not allowed: must have a _target_, an Optuna pruner "
         "class such as optuna.pruners.MedianPruner (or pick one: hydra/sweeper/pruner=<name>)"),
        ({"sampler": {"_target_": "optuna.samplers.RandomSampler", "seed": 1, "n_startup_trials": 5}}, "hydra.sweeper.sampler: "
         "optuna.samplers.RandomSampler does not accept these arguments (got an unexpected keyword argument 'n_startup_trials'); it takes: seed"),
        ({"pruner": {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": -1}}, "hydra.sweeper.pruner: optuna.pruners.MedianPruner "
         "refused its arguments {'n_startup_trials': -1}: ValueError: Number of startup trials cannot be negative, but got n_startup_trials=-1."),
        ({"pruner": {"_target_": "optuna.pruners.HyperbandPruner", "min_resource": 0}}, "hydra.sweeper.pruner: "
         "optuna.pruners.HyperbandPruner fails with its arguments {'min_resource': 0} (ZeroDivisionError: division by zero)"),
        ({"n_trials": "ten"}, "hydra.sweeper.n_trials: Value 'ten' of type 'str' could not be converted to Integer"),
        ({"n_trails": 10}, "hydra.sweeper.n_trails: Key 'n_trails' not in 'OptunaSweeperConf'"),
        ({"direction": "up"}, "hydra.sweeper.direction=up is not allowed: must be maximize, minimize, or a list of them"),
        ({"max_failure_rate": 1.5}, "hydra.sweeper.max_failure_rate=1.5 is not allowed: must be a number from 0 to 1"),
        ({"grace_period": 30}, "hydra.sweeper.grace_period=30 is not allowed: must be null or at least heartbeat_interval (60) seconds"),
        ({"stop_after_failures": -1}, "hydra.sweeper.stop_after_failures=-1 is not allowed: must be 0 (never stop early) or a whole number >= 1"),
    ],
)  # fmt: skip
def test_every_sweeper_option_is_checked_naming_the_key(option: dict, message: str) -> None:
    from hydra.errors import HydraException

    from embedsweep.errors import UserError

    with pytest.raises((HydraException, UserError)) as info:
        options(**option)
    assert str(info.value) == message


def test_the_presets_are_optuna_classes_with_their_arguments(compose) -> None:
    """The short names are config groups of `_target_` nodes; a preset's own pruner is a group option
    too, so that a pruner picked on the command line replaces it whole (no n_warmup_steps left over)."""
    from embedsweep.studies.study import make_pruner
    from hydra_plugins.embedsweep_optuna_sweeper._impl import make_sampler

    sweeper = compose("hydra/sweeper=optuna", hydra_config=True).hydra.sweeper
    assert OmegaConf.to_container(sweeper.sampler) == {"_target_": "optuna.samplers.TPESampler", "seed": 42, "n_startup_trials": 5, "constant_liar": True}
    tpe = make_sampler(sweeper.sampler)
    assert type(tpe) is optuna.samplers.TPESampler and (tpe._n_startup_trials, tpe._constant_liar) == (5, True)
    median = make_pruner(sweeper.pruner)
    assert type(median) is optuna.pruners.MedianPruner and (median._n_startup_trials, median._n_warmup_steps) == (2, 0)
    preset = compose("hparams_search=batch_warmup", "hydra/sweeper/pruner=none", "hydra/sweeper/sampler=random", hydra_config=True).hydra.sweeper
    assert OmegaConf.to_container(preset.pruner) == {"_target_": "optuna.pruners.NopPruner"}
    assert OmegaConf.to_container(preset.sampler) == {"_target_": "optuna.samplers.RandomSampler", "seed": 42}
    sts = compose("hparams_search=sts", hydra_config=True).hydra.sweeper
    assert (sts.sampler.n_startup_trials, sts.pruner.n_startup_trials, sts.pruner.n_warmup_steps) == (4, 3, 100)


@pytest.mark.parametrize("preset", sorted(str(p.relative_to(PRESETS)) for p in PRESETS.glob("*/*.yaml")))
def test_every_preset_builds_the_optuna_class_it_names(preset: str) -> None:
    """Each file of conf/hydra/sweeper/sampler and .../pruner is an Optuna class with arguments it takes."""
    from embedsweep.studies.study import make_pruner, target_class
    from hydra_plugins.embedsweep_optuna_sweeper._impl import make_sampler

    kind = preset.split("/")[0]
    node = OmegaConf.to_container(OmegaConf.load(PRESETS / preset))
    built = make_sampler(node) if kind == "sampler" else make_pruner(node)
    # (Optuna's GridSampler is built as the sweeper's subclass of the same name.)
    assert isinstance(built, target_class(node, kind)) and type(built).__name__ == node["_target_"].rsplit(".", 1)[1]


def test_a_sampler_given_by_target_is_built_with_its_arguments_and_reseeded_per_trial(tmp_path: Path) -> None:
    """Any Optuna sampler, here QMC (no preset): the study samples with that class and its arguments,
    and its seed becomes seed + trial number (+ the study's offset), as for the presets; a grid gets the search space's points."""
    from embedsweep.studies.study import open_storage
    from hydra_plugins.embedsweep_optuna_sweeper._impl import make_sampler, study_offset

    opts = options(study_name="q", sampler={"_target_": "optuna.samplers.QMCSampler", "qmc_type": "halton", "seed": 5})
    space = SearchSpace.parse({"trainer.lr": "interval(1e-4,1e-3)"}, [])
    study = open_study(opts, open_storage(f"sqlite:///{tmp_path}/o.db"), space, ["maximize"])
    trials = [ask(study, opts, space) for _ in range(2)]
    assert type(study.sampler) is optuna.samplers.QMCSampler and study.sampler._qmc_type == "halton"
    assert study.sampler._seed == (5 + trials[-1].number + study_offset("q")) % 2**32
    grid = make_sampler({"_target_": "optuna.samplers.GridSampler", "search_space": None, "seed": 1}, SearchSpace.parse({"batch": "choice(8,16)"}, []))
    assert isinstance(grid, optuna.samplers.GridSampler) and grid._search_space == {"batch": [8, 16]}


def test_preflight_refuses_a_bad_sampler_through_the_sweepers_own_check() -> None:
    """The multirun's preflight runs the plugin's check_options: the same one line, before any folder or store."""
    from hydra import compose, initialize_config_dir

    from embedsweep.checks.preflight import Preflight, Refused

    bad = "hydra.sweeper.sampler._target_=optuna.samplers.NoSuchSampler"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):  # the preflight asks Hydra for group options
        config = compose("train", overrides=["hydra/sweeper=optuna", "model=tiny", bad], return_hydra_config=True)
        with pytest.raises(Refused) as info:
            Preflight().on_multirun_start(config)
    with pytest.raises(Exception) as direct:
        check_options(OmegaConf.to_container(config.hydra.sweeper, resolve=True))
    assert str(info.value) == str(direct.value) == (
        "hydra.sweeper.sampler._target_=optuna.samplers.NoSuchSampler is not allowed: must be an Optuna sampler class "
        "(a subclass of optuna.samplers.BaseSampler), such as optuna.samplers.TPESampler"
    )


@pytest.mark.slow  # a real sweep in a subprocess: the fast suite stays as fast as before this round
def test_a_sweep_samples_and_prunes_with_the_classes_its_config_names(train_cmd, tmp_path: Path) -> None:
    """A real sweep with a sampler and a pruner given by `_target_` and arguments on the command line:
    RandomSampler with seed 3 proposes the trial's learning rate (as RandomSampler(seed=3 + trial
    number + the study's offset) does), and ThresholdPruner(lower=2.0), built inside the job from the
    same config, prunes the trial at its first evaluation (no pearson_cosine reaches 2); the default
    median pruner never prunes a study's first trial. One trial: a job costs seconds (the re-seeding per trial number is
    checked above, in process)."""
    proc = train_cmd(
        "-m", "hydra/sweeper=optuna", *QUICK, "trainer.lr=interval(1e-4,1e-3)", "hydra.sweeper.n_trials=1", "test=none",
        "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=3",
        "hydra/sweeper/pruner=none", "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner", "+hydra.sweeper.pruner.lower=2.0",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results,) = results_of(tmp_path)
    (trial,) = results["trials"]
    assert (trial["number"], trial["state"], trial["last_step"]) == (0, "PRUNED", 2)
    from hydra_plugins.embedsweep_optuna_sweeper._impl import study_offset

    replay = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=(3 + study_offset(results["study_name"])) % 2**32)).ask()
    assert trial["params"]["trainer.lr"] == replay.suggest_float("trainer.lr", 1e-4, 1e-3)


def test_an_unknown_sampler_is_one_line_before_any_sweep_work(train_cmd, tmp_path: Path) -> None:
    proc = train_cmd("-m", "hydra/sweeper=optuna", *QUICK, "batch=choice(8,16)", "hydra.sweeper.sampler._target_=optuna.samplers.Nope")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: hydra.sweeper.sampler._target_=optuna.samplers.Nope is not allowed: must be an Optuna sampler class "
        "(a subclass of optuna.samplers.BaseSampler), such as optuna.samplers.TPESampler"
    )
    assert not (tmp_path / "outputs" / "optuna.db").exists()


def test_the_old_name_spelling_of_a_pruner_says_how_to_pick_one() -> None:
    """`hydra.sweeper.pruner.name=none` was the spelling before pruners were `_target_` configs."""
    from hydra.errors import ConfigCompositionException

    from embedsweep.checks.overrides import explain

    exc = ConfigCompositionException("Could not override 'hydra.sweeper.pruner.name'.\nTo append to your config use +hydra.sweeper.pruner.name=none")
    assert explain(exc, ["hydra.sweeper.pruner.name=none"], str(ROOT / "conf"), "train") == (
        "hydra.sweeper.pruner.name is not an argument of the chosen pruner preset; pick another with hydra/sweeper/pruner=<name> "
        "(options: batch_warmup, hyperband, median, none, sts), or give its Optuna class an argument the preset does not list "
        "with +hydra.sweeper.pruner.name=..."
    )


def test_a_bad_sweeper_option_fails_before_any_sweep_work(train_cmd, tmp_path: Path) -> None:
    proc = train_cmd(*SWEEP, "hydra.sweeper.max_trials=0")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: hydra.sweeper.max_trials=0 is not allowed: must be null (no budget) or a whole number >= 1"
    assert not (tmp_path / "outputs" / "mlflow.db").exists() and not (tmp_path / "outputs" / "optuna.db").exists()


def test_the_shared_check_knows_which_keys_the_sweep_sets(compose) -> None:
    from embedsweep.checks.config import validate
    from embedsweep.errors import UserError
    from embedsweep.swept import swept_values_of

    config = OmegaConf.create({"hydra": {
        "overrides": {"task": ["batch=32,128", "model=tiny", "trainer.lr=choice(1e-3,1e-4)", "trainer.seed=range(1,3)", "trainer.epochs=2"]},
        "sweeper": {"params": {"trainer.warmup_ratio": "interval(0,0.3)", "batch": "choice(8,16)", "trainer.epochs": "choice(1,3)"}},
    }})  # fmt: skip
    # The command line first and winning on a shared key (batch's values; epochs fixed), then params.
    assert swept_values_of(config) == {"batch": ["32", "128"], "trainer.lr": ["0.001", "0.0001"], "trainer.seed": ["1", "2"], "trainer.warmup_ratio": None}
    assert swept_values_of(OmegaConf.create({"hydra": {"overrides": {"task": []}, "sweeper": {}}})) == {}
    neither = compose("trainer.warmup_ratio=null")
    validate(neither, swept=frozenset({"trainer.warmup_ratio"}))  # each job will have its own
    with pytest.raises(UserError, match="both null"):
        validate(neither, swept=frozenset({"batch"}))


def test_a_recipe_with_a_warmup_step_count_under_the_ratio_search_runs(train_cmd, tmp_path: Path) -> None:
    """The search preset clears the recipe's warmup_steps and sweeps warmup_ratio: the multirun's shared
    config has neither, and must not be refused for it (each job gets its sampled ratio)."""
    recipe = ["experiment=recipe_minilm_mnr_offline", "data=snli_1pct", "eval=stsb_captions"]  # the recipe, on packaged data
    proc = train_cmd("-m", "hparams_search=batch_warmup", *recipe, *QUICK, "trainer.max_steps=2", "test=none",
                     "hydra.sweeper.n_trials=1", "hydra/sweeper/pruner=none", "batch=choice(8)")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (trial,) = optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path}/outputs/optuna.db").trials
    assert trial.state == TrialState.COMPLETE and 0.0 <= trial.params["trainer.warmup_ratio"] <= 0.3


def test_a_sweep_stops_when_its_first_trials_fail_alike() -> None:
    same, other = Tally(), Tally()
    for tally, errors in ((same, ["E: x", "E: x", "E: x"]), (other, ["E: x", "E: y", "E: x"])):
        for error in errors:
            tally.add(TrialState.FAIL, error)
    assert same.systematic(3) == "E: x" and other.systematic(3) is None
    assert same.systematic(0) is None and same.systematic(4) is None
    mixed = Tally()
    for state in ("FAIL", "COMPLETE", "FAIL"):
        mixed.add(TrialState[state], "E: x")
    assert mixed.systematic(3) is None


def test_tell_records_complete_pruned_and_failed_jobs(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/o.db"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    done = JobReturn(status=JobStatus.COMPLETED, _return_value=0.7)
    pruned = JobReturn(status=JobStatus.FAILED, _return_value=optuna.TrialPruned("pruned at step 4"))
    crashed = JobReturn(status=JobStatus.FAILED, _return_value=RuntimeError("CUDA out of memory"))
    nan = JobReturn(status=JobStatus.COMPLETED, _return_value=math.nan)
    states = [tell(study, study.ask(), r, n_objectives=1) for r in (done, pruned, crashed, nan)]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.FAIL]
    trials = load(storage).trials
    assert trials[0].value == 0.7
    assert trials[2].user_attrs["error"] == "RuntimeError: CUDA out of memory"
    assert "expected 1 finite number" in trials[3].user_attrs["error"]


def test_a_trial_on_several_seeds_reports_their_mean_or_its_first_failure(tmp_path: Path) -> None:
    from hydra_plugins.embedsweep_optuna_sweeper._impl import tell_seeds

    storage = f"sqlite:///{tmp_path}/o.db"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    done = [JobReturn(status=JobStatus.COMPLETED, _return_value=v) for v in (0.70, 0.74, 0.78)]
    pruned = JobReturn(status=JobStatus.FAILED, _return_value=optuna.TrialPruned("pruned at step 4"))
    crashed = JobReturn(status=JobStatus.FAILED, _return_value=RuntimeError("boom"))
    assert tell_seeds(study, study.ask(), done, n_objectives=1) == TrialState.COMPLETE
    assert tell_seeds(study, study.ask(), [done[0], pruned, crashed], n_objectives=1) == TrialState.PRUNED
    assert tell_seeds(study, study.ask(), [crashed, done[0]], n_objectives=1) == TrialState.FAIL
    trials = load(storage).trials
    assert trials[0].value == pytest.approx(0.74) and trials[0].user_attrs["seed_values"] == [[0.70], [0.74], [0.78]]
    assert trials[2].user_attrs["error"] == "RuntimeError: boom"
    assert options(seeds=[1, 2]).seeds == [1, 2] and options().seeds is None
    with pytest.raises(Exception, match="distinct seeds"):
        options(seeds=[1, 1])


@pytest.mark.slow
def test_seeds_run_every_trial_on_each_seed_and_the_study_gets_the_mean(train_cmd, mlflow_runs, tmp_path: Path) -> None:
    proc = train_cmd(*SWEEP, "hydra.sweeper.n_trials=2", "hydra/sweeper/pruner=none", "hydra.sweeper.seeds=[1,2]", "test=none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = mlflow_runs()
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted((r.data.tags["trial_number"], r.data.params["trainer.seed"]) for r in children) == [("0", "1"), ("0", "2"), ("1", "1"), ("1", "2")]
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path}/outputs/optuna.db")
    for trial in study.trials:
        scores = [r.data.metrics["answer/pearson_cosine"] for r in children if r.data.tags["trial_number"] == str(trial.number)]
        assert trial.value == pytest.approx(sum(scores) / 2)
    assert "across seeds (pearson_cosine, mean ± std):" in proc.stdout
    assert len(list((tmp_path / "outputs" / "multiruns").glob("*/*/[0-9]*"))) == 4  # one folder per job, none shared


def test_trials_are_seeded_by_number_so_a_resumed_study_proposes_new_points(tmp_path: Path) -> None:
    opts = options(study_name="s", sampler={"_target_": "optuna.samplers.RandomSampler", "seed": 7}, heartbeat_interval=60)
    space = SearchSpace.parse({"batch": "choice(16,32,64,128,256)", "warmup": "int(interval(0,500))"}, [])
    from embedsweep.studies.study import open_storage

    def propose(db: str, n: int) -> list[dict]:
        study = open_study(opts, open_storage(f"sqlite:///{tmp_path}/{db}", 60), space, ["maximize"])
        trials = [ask(study, opts, space) for _ in range(n)]
        for t in trials:
            study.tell(t, 0.0)
        return [t.params for t in trials]

    first, resumed = propose("a.db", 3), propose("a.db", 3)
    assert propose("b.db", 6) == first + resumed  # a fresh study with the same seed replays exactly
    assert len({tuple(p.items()) for p in first + resumed}) == 6  # a resumed run does not repeat the first


def test_a_killed_sweeps_running_trials_fail_but_a_live_sweeps_do_not(tmp_path: Path) -> None:
    """The dead sweep's last beat is set 10 minutes back in the store (an explicit clock, not a sleep):
    beyond the 60 s grace period, while the live sweep's beat of a moment ago is well within it."""
    import sqlite3

    from embedsweep.studies.study import open_storage

    url = f"sqlite:///{tmp_path}/o.db"
    opts = options(study_name="s", storage=url, heartbeat_interval=30, grace_period=60)
    space = SearchSpace.parse({"batch": "choice(16,32)"}, [])
    storage = open_storage(url, heartbeat_interval=30, grace_period=60)
    study = open_study(opts, storage, space, ["maximize"])
    dead, alive = ask(study, opts, space), ask(study, opts, space)
    ids = {t.number: storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("s"), t.number) for t in (dead, alive)}
    for trial_id in ids.values():
        storage.record_heartbeat(trial_id)
    with sqlite3.connect(tmp_path / "o.db") as con:  # the dead sweep beat last 10 minutes ago
        moved = con.execute("update trial_heartbeats set heartbeat = datetime(heartbeat, '-600 seconds') where trial_id = ?", (ids[dead.number],))
        assert moved.rowcount == 1
    open_study(opts, open_storage(url, 30, 60), space, ["maximize"])  # the next invocation
    states = {t.number: t.state for t in load(url).trials}
    assert states == {dead.number: TrialState.FAIL, alive.number: TrialState.RUNNING}


# ---------------------------------------------------------------- slow: the real command


@pytest.mark.slow
def test_a_sweep_resumes_until_max_trials_then_is_a_no_op(train_cmd, mlflow_runs, tmp_path: Path) -> None:
    budget = ["hydra.sweeper.max_trials=8", "hydra/sweeper/pruner=none"]
    first = train_cmd(*SWEEP, "hydra.sweeper.n_trials=6", *budget)
    assert first.returncode == 0, first.stderr[-3000:]
    (results,) = results_of(tmp_path)
    assert [t["number"] for t in results["trials"]] == list(range(6))
    assert results["this_run"] == {"COMPLETE": 6, "PRUNED": 0, "FAIL": 0}
    assert {t["params"]["batch"] for t in results["trials"]} <= {16, 32}
    assert all(0 <= t["params"]["trainer.warmup_ratio"] <= 0.3 for t in results["trials"])
    best = max(results["trials"], key=lambda t: t["values"][0])
    assert (results["best_trial"], results["best_params"]) == (best["number"], best["params"])

    runs = mlflow_runs()
    (parent,) = [r for r in runs if r.data.tags.get("embedsweep.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(int(r.data.tags["trial_number"]) for r in children) == list(range(6))
    assert {(r.data.tags["study_name"], r.data.tags["trial_state"], r.info.status) for r in children} == {
        (results["study_name"], "COMPLETE", "FINISHED")
    }
    assert {r.info.run_name.split()[0].split("=")[0] for r in children} == {"batch"}  # names show the swept keys
    assert parent.data.metrics["best_pearson_cosine"] == pytest.approx(best["values"][0])
    assert parent.data.params["best.batch"] == str(best["params"]["batch"])

    second = train_cmd(*SWEEP, "hydra.sweeper.n_trials=6", *budget)  # the same study: only 2 trials left
    assert second.returncode == 0, second.stderr[-3000:]
    assert [t["number"] for t in results_of(tmp_path)[1]["trials"]] == list(range(8))
    assert results_of(tmp_path)[1]["this_run"]["COMPLETE"] == 2

    third = train_cmd(*SWEEP, "hydra.sweeper.n_trials=6", *budget)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "already holds 8 finished trials (max_trials=8): nothing to do" in third.stdout + third.stderr
    assert len([r for r in mlflow_runs() if r.data.tags.get("embedsweep.role") == "sweep"]) == 2  # the no-op left no run
    assert len(load(f"sqlite:///{tmp_path}/outputs/optuna.db", None).trials) == 8


@pytest.mark.slow
def test_the_median_pruner_stops_trials_in_a_bad_region(train_cmd, mlflow_runs, tmp_path: Path) -> None:
    # Half the learning rates are absurd: those trials fall behind the median at their first evaluation.
    proc = train_cmd(
        "-m", "hydra/sweeper=optuna", *QUICK, "trainer.max_steps=12", "trainer.warmup_steps=0", "trainer.lr=choice(1e-3,0.9)",
        "hydra.sweeper.n_trials=6", "hydra/sweeper/sampler=random", "hydra.sweeper.pruner.n_startup_trials=1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results,) = results_of(tmp_path)
    pruned = [t for t in results["trials"] if t["state"] == "PRUNED"]
    assert pruned and all(t["last_step"] < 12 for t in pruned)
    assert results["this_run"]["COMPLETE"] + len(pruned) + results["this_run"]["FAIL"] == 6
    killed = [r for r in mlflow_runs() if r.data.tags.get("trial_state") == "PRUNED"]
    assert len(killed) == len(pruned) and {r.info.status for r in killed} == {"KILLED"}
    assert all("error" not in r.data.tags and "pruned at step" in r.data.tags["pruned"] for r in killed)


@pytest.mark.slow
def test_failing_trials_are_recorded_and_the_sweep_goes_on(train_cmd, mlflow_runs, tmp_path: Path) -> None:
    # eval.limit=1 leaves one scored pair: that job raises; the grid runs each value once.
    grid = ["-m", "hydra/sweeper=optuna", *QUICK, "eval.limit=1,50,100", "hydra/sweeper/sampler=grid", "hydra/sweeper/pruner=none"]
    proc = train_cmd(*grid, "hydra.sweeper.n_trials=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results,) = results_of(tmp_path)
    assert results["this_run"] == {"COMPLETE": 2, "PRUNED": 0, "FAIL": 1}
    (failed,) = [t for t in results["trials"] if t["state"] == "FAIL"]
    assert failed["params"] == {"eval.limit": 1} and "too few for a meaningful correlation" in failed["error"]
    (run,) = [r for r in mlflow_runs() if r.data.tags.get("trial_state") == "FAIL"]
    assert run.info.status == "FAILED" and "too few for a meaningful correlation" in run.data.tags["error"]

    again = train_cmd(*grid)
    assert again.returncode == 0 and "no trial left to run" in again.stdout  # the grid is done: no point is repeated
    assert len(load(f"sqlite:///{tmp_path}/outputs/optuna.db", None).trials) == 3

    every = train_cmd("-m", "hydra/sweeper=optuna", *QUICK, "eval.limit=1", "hydra.sweeper.study_name=bad", "hydra.sweeper.n_trials=2")
    assert every.returncode != 0
    assert "sweep failed: 2 of 2 trials failed" in every.stderr


@pytest.mark.slow
def test_a_sweep_that_fails_systematically_stops_early(train_cmd, mlflow_runs, tmp_path: Path) -> None:
    proc = train_cmd("-m", "hydra/sweeper=optuna", *QUICK, "eval.limit=5", "batch=choice(16,32)", "hydra.sweeper.n_trials=10")
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: sweep stopped early: its first 3 trials all failed with the same error (UserError: ")
    assert last.endswith("fix that before spending the remaining 7 trial(s) (hydra.sweeper.stop_after_failures=0 never stops early)")
    trials = load(f"sqlite:///{tmp_path}/outputs/optuna.db", None).trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 3
    (results,) = results_of(tmp_path)
    assert results["this_run"] == {"COMPLETE": 0, "PRUNED": 0, "FAIL": 3}
    parent = next(r for r in mlflow_runs() if r.data.tags.get("embedsweep.role") == "sweep")
    assert parent.info.status == "FAILED"


def _concurrent(tmp_path: Path, storage: str) -> None:
    """Two sweeps of 3 trials each on one study, started together: 6 distinct trials, none lost."""
    args = [str(ROOT / "train.py"), *SWEEP, "hydra.sweeper.n_trials=3", "hydra/sweeper/pruner=none", f"hydra.sweeper.storage={storage}"]
    env = os.environ | OFFLINE_ENV | {"OMP_NUM_THREADS": "1"}
    # MLflow migrates a new SQLite store on first use, which two processes must not do at once:
    # create it first, as a deployment's existing store (or tracking server) would be.
    from mlflow import MlflowClient

    (tmp_path / "outputs").mkdir()
    MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/outputs/mlflow.db").search_experiments()
    procs = [subprocess.Popen([sys.executable, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    trials = load(storage, None).trials
    assert sorted(t.number for t in trials) == list(range(6))
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    per_run = [r["this_run"]["COMPLETE"] for r in results_of(tmp_path)]
    assert per_run == [3, 3]


@pytest.mark.slow
def test_two_sweeps_at_once_share_a_sqlite_study(tmp_path: Path) -> None:
    _concurrent(tmp_path, f"sqlite:///{tmp_path}/outputs/optuna.db")


@pytest.fixture
def postgres_url(postgres_db) -> str:
    """A fresh database made by the conftest fixture (it connects to the `postgres` maintenance database
    every server has), reached here through psycopg2, the driver of plain postgresql+psycopg2:// URLs."""
    require_module("psycopg2", "psycopg2 is not installed (pip install -e '.[dev]')")
    return postgres_db().replace("postgresql+psycopg://", "postgresql+psycopg2://", 1)


@pytest.mark.slow
def test_two_sweeps_at_once_share_a_postgres_study(tmp_path: Path, postgres_url: str) -> None:
    _concurrent(tmp_path, postgres_url)


@pytest.mark.slow
def test_both_metrics_as_a_multi_objective_study(train_cmd, tmp_path: Path) -> None:
    proc = train_cmd(*SWEEP, "objective=[pearson_cosine,spearman_cosine]", "hydra.sweeper.n_trials=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results,) = results_of(tmp_path)
    assert results["objectives"] == {"pearson_cosine": "maximize", "spearman_cosine": "maximize"}
    assert results["this_run"]["COMPLETE"] == 3  # no pruning: Optuna cannot prune multi-objective trials
    assert results["best_trials"] and all(set(t["values"]) == {"pearson_cosine", "spearman_cosine"} for t in results["best_trials"])


@pytest.mark.slow
def test_joblib_runs_trials_in_parallel(train_cmd, mlflow_runs, tmp_path: Path) -> None:
    require_module("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher is not installed (pip install -e '.[joblib]')")
    # verbose=true: the quiet console hides Hydra's launcher line, which names the parallel pool.
    proc = train_cmd(*SWEEP, "launcher=joblib", "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=4", "verbose=true", env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    (results,) = results_of(tmp_path)
    assert sum(results["this_run"].values()) == 4 and results["this_run"]["FAIL"] == 0
    children = [r for r in mlflow_runs() if "trial_number" in r.data.tags]
    assert sorted(int(r.data.tags["trial_number"]) for r in children) == [0, 1, 2, 3]
    assert len({r.data.tags["mlflow.parentRunId"] for r in children}) == 1
    # The parent's summary comes from the child runs: per-job Hydra callbacks ran in the workers.
    (parent,) = [r for r in mlflow_runs() if r.data.tags.get("embedsweep.role") == "sweep"]
    finished = [r for r in children if r.info.status == "FINISHED"]
    assert parent.data.metrics["jobs_finished"] == len(finished) and parent.data.metrics["jobs_failed"] == 0
    assert parent.data.metrics["best_objective"] == pytest.approx(max(r.data.metrics["answer/pearson_cosine"] for r in finished))


@pytest.mark.slow
def test_sigterm_mid_sweep_fails_the_trial_and_the_study_resumes(mlflow_runs, tmp_path: Path) -> None:
    """SLURM preemption: the running trial is FAIL, its run KILLED, no results file; the next call goes on."""
    import signal
    import sqlite3

    long_trials = ["trainer.max_steps=100000", "trainer.epochs=1000", "batch=choice(4)", "trainer.logging_steps=1"]
    named = "hydra.sweeper.study_name=preempted"  # one study across commands whose fixed settings differ (shorter trials)
    cmd = [sys.executable, str(ROOT / "train.py"), *SWEEP, *long_trials, "hydra.sweeper.n_trials=3", named]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=os.environ | OFFLINE_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = tmp_path / "outputs" / "mlflow.db"
    try:
        deadline = time.monotonic() + 400  # start-up: minutes on a loaded machine
        while time.monotonic() < deadline:
            try:
                with sqlite3.connect(db) as con:
                    if con.execute("select count(*) from metrics where key = 'history/loss'").fetchone()[0] >= 2:
                        break
            except sqlite3.OperationalError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError("the first trial never started training")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    study = load(f"sqlite:///{tmp_path}/outputs/optuna.db", "preempted")
    assert [(t.number, t.state) for t in study.trials] == [(0, TrialState.FAIL)]
    assert "KeyboardInterrupt" in study.trials[0].user_attrs["error"]
    runs = mlflow_runs()
    (parent,) = [r for r in runs if r.data.tags.get("embedsweep.role") == "sweep"]
    (child,) = [r for r in runs if r is not parent]
    assert (parent.info.status, child.info.status, child.data.tags["trial_state"]) == ("KILLED", "KILLED", "FAIL")
    assert results_of(tmp_path) == []  # no half-written results

    changed = subprocess.run([sys.executable, str(ROOT / "train.py"), *SWEEP, "hydra.sweeper.n_trials=1", named],
                             cwd=tmp_path, env=os.environ | OFFLINE_ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert changed.returncode == 2  # another batch space on the same study: one clear line
    assert changed.stderr.strip().splitlines()[-1] == (
        "error: study 'preempted' searches batch in choice(4); this sweep searches batch in choice(16, 32): "
        "use another hydra.sweeper.study_name or leave it unset (a name is then made from the search)"
    )
    again = subprocess.run([sys.executable, str(ROOT / "train.py"), *SWEEP, "batch=choice(4)", "hydra.sweeper.n_trials=1", named],
                           cwd=tmp_path, env=os.environ | OFFLINE_ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    states = [(t.number, t.state) for t in load(f"sqlite:///{tmp_path}/outputs/optuna.db", "preempted").trials]
    assert states == [(0, TrialState.FAIL), (1, TrialState.COMPLETE)]  # the refused space added no trial


def test_hyperband_is_built_on_both_sides_and_prunes_at_its_rungs(tmp_path: Path) -> None:
    """hydra/sweeper/pruner=hyperband: the sweeper's study and the job's trial (attach_trial, whose
    pruner decides should_prune) both get Optuna's HyperbandPruner with the configured min_resource and
    reduction_factor; 9 good trials complete, then 6 bad ones are pruned, each at the first rung of its
    bracket (Hyperband puts a trial in a bracket by a hash of the study name and trial number, so the
    steps are fixed): the pattern of steps 2, 4, 8 and 16 is Hyperband's own (the median pruner stops
    every bad trial at step 1).
    Kills: make_pruner building a MedianPruner or NopPruner for "hyperband"; min_resource or
    reduction_factor not passed on (Optuna's defaults 1 and 3 give other rungs for 2 and 2)."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from embedsweep.studies import pruning
    from embedsweep.studies.study import attach_trial, open_storage

    url = f"sqlite:///{tmp_path}/o.db"
    pruner = {"_target_": "optuna.pruners.HyperbandPruner", "min_resource": 2, "reduction_factor": 2}
    opts = options(study_name="hb", storage=url, pruner=pruner)
    space = SearchSpace.parse({"batch": "choice(16,32)"}, [])
    study = open_study(opts, open_storage(url), space, ["maximize"])
    sweeper = OmegaConf.create({"storage": url, "study_name": "hb", "pruner": pruner})  # the job's view of hydra.sweeper
    pruned = []
    for n in range(15):
        trial = ask(study, opts, space)
        job_trial = attach_trial(sweeper, trial.number)  # what the job process reports to
        for side in (study.pruner, job_trial.study.pruner):
            assert type(side) is optuna.pruners.HyperbandPruner
            assert (side._min_resource, side._reduction_factor) == (2, 2)
        quality = 0.8 + 0.01 * n if n < 9 else 0.1  # each good trial the best so far: never pruned
        report = pruning.report_to(job_trial, "pearson_cosine")
        try:
            for step in range(1, 17):
                report.on_evaluate(None, SimpleNamespace(global_step=step), None, metrics={"eval_sts_pearson_cosine": quality + 0.001 * step})
        except optuna.TrialPruned as exc:
            assert str(exc) == f"trial {n} pruned at step {step} (pearson_cosine={quality + 0.001 * step:.4f})"
            study.tell(trial, state=TrialState.PRUNED)
            pruned.append((n, step))
        else:
            study.tell(trial, quality + 0.016)
    assert pruned == [(9, 2), (10, 4), (11, 4), (12, 2), (13, 8), (14, 16)]  # rungs at 2, 4, 8, 16 steps


def _trial_job(tmp_path: Path, name: str, value: float | None, model: bool = True) -> JobReturn:
    """A finished job of a trial: its output folder (with a saved model, or not) and its objective
    (None: it raised, as a pruned or failed job does)."""
    folder = tmp_path / name
    if model:
        (folder / "model").mkdir(parents=True)
        (folder / "model" / "model.safetensors").write_bytes(b"weights")
    result = JobReturn(overrides=[], cfg=None, hydra_cfg=OmegaConf.create({"hydra": {"runtime": {"output_dir": str(folder)}}}))
    result.status = JobStatus.COMPLETED if value is not None else JobStatus.FAILED
    result.return_value = value if value is not None else RuntimeError("pruned or failed")
    return result


def _models_left(tmp_path: Path) -> list[str]:
    return sorted(p.parent.name for p in tmp_path.glob("*/model"))


def test_keep_best_model_keeps_exactly_the_best_trials_model(tmp_path: Path) -> None:
    """Over two batches, only the best COMPLETE trial's model is left on disk: a worse trial's is
    deleted at once, the previous best's when a better one finishes, a tie keeps the first (Optuna's
    best_trial, and the model promote() takes), and a FAIL trial's model is deleted too, even with the
    highest value (trainer.seeds: one seed finished and saved its model, another failed, so the trial
    FAILed); minimize keeps the lowest.
    Kills: the `else: rmtree(folder)` branch dropped (worse models kept); the previous best not deleted;
    `>` as `>=` (a tie replaces the first); `maximize` ignored; a FAIL trial's saved model left behind
    (the code before this test: it skipped every trial that was not COMPLETE)."""
    from hydra_plugins.embedsweep_optuna_sweeper._impl import keep_best_model

    first = [
        (TrialState.COMPLETE, _trial_job(tmp_path, "t0", 0.5)),
        (TrialState.COMPLETE, _trial_job(tmp_path, "t1", 0.7)),
        (TrialState.PRUNED, _trial_job(tmp_path, "t2", None, model=False)),
        (TrialState.FAIL, _trial_job(tmp_path, "t3", 0.95)),  # a seed that finished, of a trial whose other seed failed
        (TrialState.COMPLETE, _trial_job(tmp_path, "t4", 0.6)),
    ]
    kept = keep_best_model(None, first, maximize=True)
    assert (kept.value, kept.path, _models_left(tmp_path)) == (0.7, tmp_path / "t1" / "model", ["t1"])
    second = [(TrialState.COMPLETE, _trial_job(tmp_path, "t5", 0.7)), (TrialState.COMPLETE, _trial_job(tmp_path, "t6", 0.9))]
    kept = keep_best_model(kept, second, maximize=True)
    assert (kept.value, kept.path, _models_left(tmp_path)) == (0.9, tmp_path / "t6" / "model", ["t6"])
    third = [(TrialState.COMPLETE, _trial_job(tmp_path, "t7", 0.9)), (TrialState.COMPLETE, _trial_job(tmp_path, "t8", 0.2))]
    kept = keep_best_model(kept, third, maximize=True)
    assert (kept.path, _models_left(tmp_path)) == (tmp_path / "t6" / "model", ["t6"])  # the tie keeps the first

    low = tmp_path / "minimize"
    kept = keep_best_model(None, [(TrialState.COMPLETE, _trial_job(low, "a", 0.3)), (TrialState.COMPLETE, _trial_job(low, "b", 0.1))], maximize=False)
    assert (kept.value, _models_left(low)) == (0.1, ["b"])
