"""Every config group option composes, and composes to what its name promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import CONF, local_files, require_module, write_local_files

GROUPS = ["data", "eval", "loss", "model", "trainer", "tracking", "paths"]
NEEDS_PATH = {"local", "scored_local"}  # data=local / eval=local / data=scored_local have a mandatory path


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes(compose, group: str, option: str) -> None:
    overrides = [f"{group}={option}"]
    if option in NEEDS_PATH:
        overrides.append(f"{group}.path=some/file.tsv")
    cfg = compose(*overrides)
    assert cfg[group].get("name", option) == option
    assert "???" not in str(cfg)  # nothing mandatory left unset


@pytest.mark.parametrize("preset", [p for p in options("experiment") if p.startswith("recipe_")])
def test_every_experiment_preset_composes(compose, preset: str, tmp_path: Path) -> None:
    """Composes and validates as on this machine; an offline preset reads small files written into a
    tmp paths.data_dir, so this needs no ../shared/data."""
    from embedsweep.checks.config import validate

    cfg = compose(f"experiment={preset}", f"paths.data_dir={tmp_path}")
    write_local_files(cfg)
    validate(cfg)
    assert (cfg.batch, cfg.trainer.warmup_steps, cfg.trainer.warmup_ratio, cfg.trainer.epochs) == (32, 100, None, 1)
    if preset.endswith("_offline"):
        assert (cfg.data.name, cfg.eval.name, cfg.model.name) == ("mnli_local", "stsb_local", "minilm")
        assert cfg.data.path == f"{tmp_path}/mnli/train.tsv" and cfg.data.limit == 50000
    else:
        assert (cfg.data.name, cfg.eval.name) == ("mnli", "stsb")


@pytest.mark.parametrize("preset", ["sts", "sts_offline"])
def test_the_sts_recipe_presets_train_on_scored_pairs_and_test_on_unseen_pairs(compose, preset: str, tmp_path: Path) -> None:
    from embedsweep.checks.config import validate

    cfg = compose(f"experiment={preset}", f"paths.data_dir={tmp_path}")
    write_local_files(cfg)
    validate(cfg)
    assert (cfg.data.kind, cfg.loss.name, cfg.model.name, cfg.batch) == ("scored", "cosine", "minilm", 16)
    assert (cfg.trainer.lr, cfg.trainer.warmup_ratio, cfg.trainer.warmup_steps, cfg.trainer.epochs) == (2e-5, 0.1, None, 1)
    if preset == "sts":  # the Hub's STS-B splits
        assert (cfg.data.path, cfg.data.split, cfg.eval.name, cfg.test.path, cfg.test.split) == (
            "sentence-transformers/stsb", "train", "stsb", "sentence-transformers/stsb", "test")
    else:  # STS-B train from the data directory, a fifth of its pairs held out as the test set
        assert cfg.data.path == f"{tmp_path}/stsb/train.tsv" and cfg.eval.path == f"{tmp_path}/stsb/validation.tsv"
        assert (cfg.test.source, cfg.test.fraction, cfg.test.seed) == ("holdout", 0.2, 0)


@pytest.mark.parametrize("preset", [p for p in options("experiment") if p.endswith("_offline")])
def test_every_offline_preset_reads_only_the_data_dir_and_names_a_missing_file(compose, preset: str, tmp_path: Path) -> None:
    """Every file an offline preset reads lies under paths.data_dir (so pointing it elsewhere moves
    them all), and validation on this machine names the first one missing, key included."""
    from embedsweep.checks.config import validate
    from embedsweep.errors import UserError

    data_dir = tmp_path / "data"
    cfg = compose(f"experiment={preset}", f"paths.data_dir={data_dir}")
    files = local_files(cfg)
    assert files, f"experiment={preset} reads no local file"
    assert all(path.is_relative_to(data_dir) for path in files.values()), files
    group, path = next(iter(files.items()))
    with pytest.raises(UserError) as info:
        validate(cfg)
    assert str(info.value) == f"data file not found: {path} ({group}.path)"
    validate(cfg, check_machine=False)  # a job for another machine, which may see files this one does not
    write_local_files(cfg)
    validate(cfg)
    for group, path in files.items():  # each file on its own
        path.unlink()
        with pytest.raises(UserError) as info:
            validate(cfg)
        assert str(info.value) == f"data file not found: {path} ({group}.path)"
        write_local_files(cfg)


def test_offline_twins_read_from_the_data_dir(compose) -> None:
    cfg = compose("experiment=recipe_mnr_offline", "paths.data_dir=/data")
    assert (cfg.data.path, cfg.eval.path) == ("/data/mnli/train.tsv", "/data/stsb/validation.tsv")


def test_expected_options_exist() -> None:
    assert set(options("loss")) >= {"softmax", "cosine", "mnr", "cached_mnr"}
    assert set(options("model")) >= {"minilm", "tiny", "bert-base-uncased", "mpnet"}
    assert set(options("data")) >= {"snli_1pct", "sample", "mnli", "snli", "local", "mnli_local", "snli_local"}
    assert set(options("eval")) >= {"stsb_captions", "sample", "stsb", "local", "stsb_local"}
    assert {"recipe_softmax", "recipe_cosine", "recipe_mnr", "recipe_minilm_mnr"} <= set(options("experiment"))


def test_defaults_are_offline_and_follow_the_recipe(compose) -> None:
    cfg = compose()
    assert (cfg.data.source, cfg.eval.source, cfg.model.source) == ("packaged", "packaged", "packaged")
    assert (cfg.data.name, cfg.eval.name, cfg.model.name) == ("snli_1pct", "stsb_captions", "minilm")
    assert cfg.batch == 32 and cfg.trainer.eval_batch_size == 64
    # A short run warms up for a share of its steps, not the recipe's 100 steps.
    assert (cfg.trainer.warmup_ratio, cfg.trainer.warmup_steps) == (0.1, None) and cfg.trainer.precision == "auto"
    assert cfg.trainer.eval_steps is None and cfg.verbose is False
    assert cfg.tracking.uri == "sqlite:///outputs/mlflow.db"
    assert cfg.objective == "pearson_cosine"


def test_batch_sets_the_training_batch_only(compose) -> None:
    # Every job of a sweep over batch evaluates alike, so the untouched model's score is shared.
    cfg = compose("batch=128")
    assert (cfg.batch, cfg.trainer.eval_batch_size) == (128, 64)


def test_tracking_uri_follows_environment(compose, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert compose().tracking.uri == "http://127.0.0.1:5000"
    assert compose("tracking.uri=sqlite:///elsewhere.db").tracking.uri == "sqlite:///elsewhere.db"


def test_every_loss_declares_a_known_shape_and_sampler(compose) -> None:
    from embedsweep.run.data import SHAPES

    for loss in options("loss"):
        cfg = compose(f"loss={loss}").loss
        assert cfg.shape in SHAPES, loss
        assert cfg.batch_sampler in {"batch_sampler", "no_duplicates", "no_duplicates_hashed", "group_by_label"}
        assert cfg.module._target_.startswith("sentence_transformers."), loss
    assert compose("loss=mnr").loss.batch_sampler == "no_duplicates"
    assert compose("loss=cached_mnr").loss.module.mini_batch_size < 32


def test_outputs_go_under_outputs(compose) -> None:
    cfg = compose(hydra_config=True)
    assert cfg.hydra.run.dir.startswith("outputs/runs/")
    assert cfg.hydra.sweep.dir.startswith("outputs/multiruns/")


def test_the_slurm_launcher_composes_with_any_sweeper_and_asks_for_cpu_resources(compose) -> None:
    require_module("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher is not installed (pip install -e '.[slurm]')")
    plain = compose("launcher=slurm", hydra_config=True).hydra  # Hydra's basic sweeper: no n_jobs key
    assert plain.launcher._target_.endswith("SlurmLauncher")
    # Schedulable on any cluster, a CPU-only one included; a GPU is asked for on the command line.
    assert (plain.launcher.gpus_per_node, plain.launcher.cpus_per_task, plain.launcher.mem_gb) == (None, 1, 4)
    gpu = compose("launcher=slurm", "hparams_search=batch_warmup", "hydra.launcher.gpus_per_node=1", "hydra.sweeper.n_jobs=4", hydra_config=True).hydra
    assert (gpu.launcher.gpus_per_node, gpu.sweeper.n_jobs, gpu.launcher.array_parallelism) == (1, 4, 8)
