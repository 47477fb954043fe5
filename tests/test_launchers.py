"""Every launcher with every sweeper: `launcher=basic|joblib|slurm` (a preset) or Hydra's own
`hydra/launcher=...` group, times `hydra/sweeper=grid|optuna` or an `hparams_search` preset.

The fast part composes each combination and builds its sweeper and launcher as Hydra does (which is
where a key one sweeper lacks fails: `Key 'n_jobs' not in 'GridSweeperConf'`). The slow part runs
each one on the tiny model; the SLURM ones where a cluster takes jobs (deploy/local-cluster.sh)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import require_module, require_slurm

LAUNCHERS = {  # how the user picks it -> the launcher class Hydra builds
    "launcher=basic": "BasicLauncher",
    "launcher=joblib": "JoblibLauncher",
    "launcher=slurm": "SlurmLauncher",
    "hydra/launcher=basic": "BasicLauncher",
    "hydra/launcher=joblib": "JoblibLauncher",
    "hydra/launcher=submitit_slurm": "SlurmLauncher",
    None: "BasicLauncher",  # the default
}
SWEEPERS = {"hydra/sweeper=grid": "GridSweeper", "hydra/sweeper=optuna": "OptunaSweeper", "hparams_search=batch_warmup": "OptunaSweeper", None: "GridSweeper"}
PLUGINS = {"JoblibLauncher": "hydra_plugins.hydra_joblib_launcher", "SlurmLauncher": "hydra_plugins.hydra_submitit_launcher"}


def _needs_plugin(launcher_class: str) -> None:
    if launcher_class in PLUGINS:
        extra = "joblib" if launcher_class == "JoblibLauncher" else "slurm"
        require_module(PLUGINS[launcher_class], f"the {extra} launcher is not installed (pip install -e '.[{extra}]')")


@pytest.mark.parametrize("sweeper", list(SWEEPERS), ids=lambda s: s or "default-sweeper")
@pytest.mark.parametrize("launcher", list(LAUNCHERS), ids=lambda s: s or "default-launcher")
def test_every_launcher_composes_with_every_sweeper(compose, launcher: str | None, sweeper: str | None) -> None:
    from hydra.core.plugins import Plugins

    _needs_plugin(LAUNCHERS[launcher])
    cfg = compose("model=tiny", *(o for o in (launcher, sweeper) if o), hydra_config=True)
    # What Hydra does at the start of a multirun: build the sweeper and the launcher from their config
    # (every key of the node becomes a constructor argument).
    built_sweeper = Plugins.instance()._instantiate(cfg.hydra.sweeper)
    built_launcher = Plugins.instance()._instantiate(cfg.hydra.launcher)
    assert (type(built_sweeper).__name__, type(built_launcher).__name__) == (SWEEPERS[sweeper], LAUNCHERS[launcher])
    if launcher == "launcher=joblib":  # the preset's pool follows the sweeper's n_jobs, whichever sweeper
        assert cfg.hydra.launcher.n_jobs == cfg.hydra.sweeper.n_jobs == 2


def test_n_jobs_set_on_the_command_line_sizes_the_joblib_pool_for_either_sweeper(compose) -> None:
    _needs_plugin("JoblibLauncher")
    for sweeper in ("hydra/sweeper=grid", "hydra/sweeper=optuna"):
        cfg = compose("launcher=joblib", sweeper, "hydra.sweeper.n_jobs=3", hydra_config=True)
        assert cfg.hydra.launcher.n_jobs == 3


# ---------------------------------------------------------------- real runs of the matrix (slow)

QUICK = ["model=tiny", "trainer.max_steps=2", "trainer.warmup_steps=0", "trainer.save_model=false", "test=none"]
SWEEP_ARGS = {  # two jobs each
    "hydra/sweeper=grid": ["loss=mnr,cosine"],
    "hydra/sweeper=optuna": ["batch=choice(16,32)", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", "hydra/sweeper/pruner=none"],
}
RUN_LAUNCHERS = [l for l in LAUNCHERS if l is not None and l != "hydra/launcher=basic"]  # those two are the default's own


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("sweeper", list(SWEEP_ARGS))
@pytest.mark.parametrize("launcher", RUN_LAUNCHERS)
def test_every_launcher_runs_with_every_sweeper(train_cmd, mlflow_runs, tmp_path: Path, launcher: str, sweeper: str) -> None:
    _needs_plugin(LAUNCHERS[launcher])
    if LAUNCHERS[launcher] == "SlurmLauncher":
        require_slurm()  # one node on this machine: the SQLite stores under tmp_path are the node's too
    proc = train_cmd("-m", launcher, sweeper, *QUICK, *SWEEP_ARGS[sweeper], timeout=1100, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-4000:]
    runs = mlflow_runs()
    (parent,) = [r for r in runs if r.data.tags.get("embedsweep.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert {r.info.status for r in children} == {"FINISHED"}
    assert all("answer/pearson_cosine" in r.data.metrics for r in children)
    if sweeper == "hydra/sweeper=optuna":
        import optuna

        (summary,) = optuna.get_all_study_summaries(f"sqlite:///{tmp_path}/outputs/optuna.db")
        trials = optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{tmp_path}/outputs/optuna.db").trials
        assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
