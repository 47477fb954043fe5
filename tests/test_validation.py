"""Bad config values are one clear line (key, value, what is allowed), before any heavy work."""

from __future__ import annotations


import pytest

from embedsweep.checks.config import validate
from embedsweep.errors import UserError


def test_the_defaults_and_every_loss_validate(compose) -> None:
    for loss in ("mnr", "cached_mnr", "cosine", "softmax"):
        validate(compose(f"loss={loss}"))


def test_a_warmup_applies_and_a_step_count_wins(compose) -> None:
    from embedsweep.run.training import warmup

    validate(compose("trainer.warmup_ratio=0"))  # no warmup
    validate(compose("trainer.warmup_steps=50", "trainer.warmup_ratio=null"))  # a step count
    validate(compose("trainer.warmup_steps=50"))  # over the default ratio: the count wins
    assert warmup(compose("trainer.warmup_steps=50").trainer) == 50
    assert warmup(compose().trainer) == 0.1
    with pytest.raises(UserError, match=r"^trainer.warmup_ratio and trainer.warmup_steps are both null"):
        validate(compose("trainer.warmup_ratio=null"))


def test_the_trainer_gets_the_warmup_that_applies(compose) -> None:
    from embedsweep.run.training import warmup

    # transformers 5 reads a float < 1 as a share of the steps, an int as a step count.
    assert warmup(compose().trainer) == 0.1 and isinstance(warmup(compose().trainer), float)
    steps = warmup(compose("trainer.warmup_steps=1", "trainer.warmup_ratio=null").trainer)
    assert steps == 1 and isinstance(steps, int)
    assert warmup(compose("experiment=recipe_mnr").trainer) == 100
    from sentence_transformers import SentenceTransformerTrainingArguments

    def warmup_steps_of(*overrides: str, steps: int) -> int:
        args = SentenceTransformerTrainingArguments(output_dir="/tmp/unused", warmup_steps=warmup(compose(*overrides).trainer))
        return args.get_warmup_steps(steps)

    assert warmup_steps_of(steps=32) == 4 and warmup_steps_of(steps=320) == 32  # 0.1 of any run, rounded up
    assert warmup_steps_of("experiment=recipe_mnr", steps=1563) == 100
    assert warmup_steps_of("trainer.warmup_ratio=0", steps=50) == 0


@pytest.mark.parametrize(
    "override,message",
    [
        ("batch=0", "batch=0 is not allowed: must be a whole number > 0"),
        ("batch=-8", "batch=-8 is not allowed: must be a whole number > 0"),
        ("batch=abc", "batch='abc' is not allowed: must be a value of type int"),
        ("trainer.warmup_steps=-1", "trainer.warmup_steps=-1 is not allowed: must be a whole number >= 0"),
        ("trainer.warmup_ratio=1", "trainer.warmup_ratio=1.0 is not allowed: must be a number >= 0 and < 1"),
        ("trainer.warmup_ratio=-0.1", "trainer.warmup_ratio=-0.1 is not allowed: must be a number >= 0 and < 1"),
        ("trainer.warmup_ratio=abc", "trainer.warmup_ratio='abc' is not allowed: must be a value of type float or null"),
        ("trainer.eval_steps=0", "trainer.eval_steps=0 is not allowed: must be a whole number > 0"),
        ("trainer.lr=0", "trainer.lr=0.0 is not allowed: must be a number > 0 and < 1"),
        ("trainer.lr=-1e-5", "trainer.lr=-1e-05 is not allowed: must be a number > 0 and < 1"),
        ("trainer.epochs=0", "trainer.epochs=0.0 is not allowed: must be a number > 0"),
        ("trainer.max_steps=0", "trainer.max_steps=0 is not allowed: must be -1 (no cap) or a whole number > 0"),
        ("trainer.eval_batch_size=0", "trainer.eval_batch_size=0 is not allowed"),
        ("trainer.precision=fp8", "trainer.precision='fp8' is not allowed: must be one of auto, fp32, fp16, bf16"),
        ("verbose=maybe", "verbose='maybe' is not allowed: must be a value of type bool"),
        ("objective=accuracy", "objective=accuracy is not allowed: must be one of pearson_cosine, spearman_cosine"),
    ],
)
def test_bad_values_name_key_value_and_allowed(compose, override: str, message: str) -> None:
    with pytest.raises(UserError) as info:
        validate(compose(override))
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_a_loss_the_data_cannot_feed(compose, tmp_path) -> None:
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("premise\thypothesis\na\tb\n", encoding="utf-8")
    cfg = compose("loss=softmax", "data=local", f"data.path={pairs}", "data.columns.label=null")
    with pytest.raises(UserError, match=r"loss=softmax needs NLI labels but data=local has none .* use loss=mnr"):
        validate(cfg)
    validate(compose("loss=mnr", "data=local", f"data.path={pairs}", "data.columns.label=null"))
    with pytest.raises(UserError, match=r"^data file not found: .*missing.tsv \(data.path\)$"):
        validate(compose("loss=mnr", "data=local", f"data.path={tmp_path / 'missing.tsv'}", "data.columns.label=null"))


def test_cached_mnr_mini_batch_must_fit_in_the_batch(compose) -> None:
    with pytest.raises(UserError, match=r"loss.module.mini_batch_size=64 is not allowed with batch=32: must be > 0 and <= batch"):
        validate(compose("loss=cached_mnr", "loss.module.mini_batch_size=64", "batch=32"))
    validate(compose("loss=cached_mnr", "loss.module.mini_batch_size=64", "batch=256"))


def test_unlabelled_pairs_train_mnr(tmp_path, compose) -> None:
    from embedsweep.run import data

    path = tmp_path / "pairs.tsv"
    path.write_text("premise\thypothesis\na b c\tc b a\nd e f\tf e d\n", encoding="utf-8")
    cfg = compose("loss=mnr", "data=local", f"data.path={path}", "data.columns.label=null")
    shaped = data.shape_for_loss(data.load_nli(cfg.data), cfg.loss.shape, seed=0)
    assert shaped["anchor"] == ["a b c", "d e f"] and shaped.column_names == ["anchor", "positive", "negative"]


def test_the_command_fails_before_any_work_with_one_line_and_no_traceback(train_cmd, tmp_path) -> None:
    proc = train_cmd("trainer.warmup_steps=-5")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: trainer.warmup_steps=-5 is not allowed: must be a whole number >= 0"
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs" / "mlflow.db").exists()  # failed before any tracking work


def test_full_error_keeps_the_traceback(train_cmd) -> None:
    proc = train_cmd("batch=0", env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "UserError" in proc.stderr


@pytest.mark.parametrize(
    "override,message",
    [
        ("loss.batch_sampler=no_dups", "loss.batch_sampler=no_dups is not allowed: must be one of batch_sampler, no_duplicates, no_duplicates_hashed, group_by_label"),
        ("eval.max_score=0", "eval.max_score=0 is not allowed: must be a number > 0 (the top of the file's score scale)"),
        ("data.limit=0", "data.limit=0 is not allowed: must be null (all rows) or a whole number > 0"),
        ("eval.limit=-5", "eval.limit=-5 is not allowed: must be null (all rows) or a whole number > 0"),
        ("data.source=ftp", "data.source=ftp is not allowed: must be one of packaged, local, hub"),
        ("eval.format=xlsx", "eval.format=xlsx is not allowed: must be one of auto, tsv, csv, jsonl, parquet"),
        ("model.source=onnx", "model.source=onnx is not allowed: must be one of packaged, hub, random_bert"),
        ("model.max_seq_length=0", "model.max_seq_length=0 is not allowed: must be null or a whole number > 0"),
    ],
)
def test_every_value_that_needs_no_data_is_checked(compose, override: str, message: str) -> None:
    with pytest.raises(UserError) as info:
        validate(compose(override))
    assert str(info.value) == message


def test_the_batch_sampler_names_match_sentence_transformers() -> None:
    from sentence_transformers.base.sampler import BatchSamplers

    from embedsweep.checks.config import BATCH_SAMPLERS

    assert set(BATCH_SAMPLERS) == {s.value for s in BatchSamplers}


@pytest.mark.skipif("__import__('torch').cuda.is_available()", reason="checks a machine without a GPU")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_without_a_gpu_fails_in_validation(compose, precision: str) -> None:
    with pytest.raises(UserError) as info:
        validate(compose(f"trainer.precision={precision}"))
    assert str(info.value) == f"trainer.precision={precision} is not allowed on this machine: it has no CUDA GPU; use auto or fp32"
    validate(compose(f"trainer.precision={precision}"), check_machine=False)  # jobs that run on other machines


@pytest.mark.skipif("__import__('torch').cuda.is_available()", reason="checks a machine without a GPU")
@pytest.mark.parametrize("multirun", [False, True])
def test_config_errors_come_before_any_tracking_work(train_cmd, tmp_path, multirun: bool) -> None:
    proc = train_cmd(*(["-m", "loss=mnr,cosine"] if multirun else []), "model=tiny", "trainer.precision=bf16")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: trainer.precision=bf16 is not allowed on this machine: it has no CUDA GPU; use auto or fp32"
    assert not (tmp_path / "outputs" / "mlflow.db").exists()  # no run, no parent run


# ---------------------------------------------------------------- messages that lead to the fix (issue 21)

TRAINER_KEYS = "epochs, eval_batch_size, lr, warmup_ratio, warmup_steps, weight_decay, eval_steps, logging_steps, max_steps, seed, precision, save_model, compile, dataloader_workers"
LOSSES = "angle, cached_mnr, cosent, cosine, mnr, mnr_hard, softmax"


@pytest.mark.parametrize("override", ["trainer.lrr=1e-4", "+trainer.lrr=1e-4"])
def test_an_unknown_key_gets_did_you_mean_from_the_composed_config(train_cmd, tmp_path, override: str) -> None:
    # Hydra refuses the first ("To append to your config use +trainer.lrr=1e-4"); the schema refused the
    # second ("must be a value of type None"). Both now say what was meant.
    proc = train_cmd(override, "model=tiny")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: trainer.lrr is not a key of the config; did you mean trainer.lr? (keys of trainer: {TRAINER_KEYS})"]
    assert proc.stdout == "" and not (tmp_path / "outputs").exists()


def test_an_unknown_key_of_a_group_or_the_top_level(compose) -> None:
    from embedsweep.checks.overrides import unknown_key

    cfg = compose()
    assert unknown_key("loss.nmae", cfg) == "loss.nmae is not a key of the config; did you mean loss.name? (keys of loss: name, shape, batch_sampler, module)"
    top = unknown_key("bacth", cfg)
    assert top.startswith("bacth is not a key of the config; did you mean batch? (top-level keys: batch, objective, verbose,")
    assert "sweep" not in top and "trial" not in top  # set by the sweepers, never by hand
    assert unknown_key("trainer.zzz", cfg) == f"trainer.zzz is not a key of the config (keys of trainer: {TRAINER_KEYS})"


def test_an_unknown_group_option_is_one_line_naming_the_options(train_cmd) -> None:
    proc = train_cmd("loss=mnrr")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: loss=mnrr is not an option of the loss group; did you mean loss=mnr? (options: {LOSSES})"]
    proc = train_cmd("loss=triplet")
    assert proc.stderr.strip().splitlines() == [f"error: loss=triplet is not an option of the loss group (options: {LOSSES})"]


@pytest.mark.parametrize("sweeper", [[], ["hydra/sweeper=optuna"]])
def test_a_multirun_over_an_unknown_option_stops_before_its_parent_run(train_cmd, tmp_path, sweeper: list[str]) -> None:
    # It failed at its second job, leaving a FAILED parent run with no children and an empty summary.md.
    swept = "loss=choice(mnr,mnrr)" if sweeper else "loss=mnr,mnrr"
    proc = train_cmd("-m", *sweeper, swept, "model=tiny")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: loss=mnrr is not an option of the loss group; did you mean loss=mnr? (options: {LOSSES})"]
    assert proc.stdout == ""
    assert not (tmp_path / "outputs").exists()  # no parent run, no store, no sweep folder


def test_cfg_with_multirun_is_one_line_with_the_command_that_works(train_cmd, tmp_path) -> None:
    proc = train_cmd("-m", "loss=mnr,cosine", "batch=16", "--cfg", "job")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --cfg job prints one job's config and runs nothing, so it cannot go with -m; "
        "the sweep's first job: python train.py loss=mnr batch=16 --cfg job"
    ]
    assert proc.stdout == "" and not (tmp_path / "outputs").exists()
    shown = train_cmd("loss=mnr", "batch=16", "--cfg", "job")  # the command it gives works
    assert shown.returncode == 0 and "batch: 16" in shown.stdout.splitlines()


def test_a_multirun_checks_the_keys_it_sweeps_unless_a_swept_option_may_bring_them() -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from embedsweep.checks.config import config_dir
    from embedsweep.checks.overrides import check_swept

    def check(*task: str) -> None:
        fixed = [o for o in task if "," not in o]  # Hydra composes a multirun's shared config without its sweeps
        cfg = compose("train", overrides=fixed, return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.overrides.task = list(task)
        check_swept(cfg)

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        for task in (["trainer.lrr=1,2"], ["+trainer.lrr=1,2"], ["model=tiny", "data.pth=a,b"]):
            with pytest.raises(UserError, match=r"is not a key of the config; did you mean (trainer\.lr|data\.path)\?"):
                check(*task)
        check("trainer.lr=1e-5,2e-5", "batch=16,32", "+new_key=1,2")  # keys of the config, or added on purpose
        check("loss=mnr,cached_mnr", "loss.module.mini_batch_size=8,16")  # cached_mnr has it: each job checks its own
        check("experiment=sts,sts_offline", "trainer.anything=1,2")  # a global preset may set any key


def test_a_sweep_that_fails_before_its_first_job_leaves_no_parent_run(compose, tmp_path, mlflow_runs) -> None:
    # What the preflight cannot foresee (a launcher that fails to start the jobs) must not leave a FAILED
    # parent run with no children and an empty summary either.
    from embedsweep.conclude.conclusion import concluded
    from embedsweep.tracking import make_tracker

    cfg = compose("model=tiny", f"paths.output_root={tmp_path / 'outputs'}", f"hydra.sweep.dir={tmp_path / 'sweep'}", hydra_config=True)
    with pytest.raises(RuntimeError, match="no worker started"):
        with concluded(make_tracker(cfg.tracking), cfg, ["batch"]):
            raise RuntimeError("no worker started")
    assert mlflow_runs() == []  # created, then discarded
    assert not (tmp_path / "sweep" / "summary.md").exists()
