"""Training that does nothing, or not what was asked, says so: a warning and a run tag, or a refusal
before training where the result could not mean anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedsweep.run import data, models, training

from embedsweep.checks import training_checks
from embedsweep.errors import UserError
from embedsweep.checks.training_checks import Finding


def test_a_batch_larger_than_the_data() -> None:
    (finding,) = training_checks.check_batches([80], batch=256, rows=80, sampler="batch_sampler")
    assert finding == Finding("batch_exceeds_data", "batch=256 but the training data has only 80 rows: every step sees at most 80")


def test_a_no_duplicates_sampler_that_cannot_fill_its_batches() -> None:
    (finding,) = training_checks.check_batches([32, 20, 9, 5], batch=32, rows=66, sampler="no_duplicates")
    assert finding.name == "batches_short"
    assert finding.message == (
        "2 of 4 batches hold fewer than batch=32 rows (smallest 9): the no_duplicates sampler cannot fill them "
        "without repeating a text (the data repeats texts)"
    )
    assert training_checks.check_batches([32, 32, 5], batch=32, rows=69, sampler="no_duplicates") == []  # a short last batch is normal


def test_a_run_that_never_leaves_its_warmup() -> None:
    (finding,) = training_checks.check_warmup(total_steps=8, warmup_steps=100)
    assert finding.name == "warmup_covers_run"
    assert finding.message.startswith("the whole run (8 steps) stays inside the warmup (100 steps): the learning rate peaks at 8% of trainer.lr")
    assert training_checks.check_warmup(total_steps=101, warmup_steps=100) == []
    assert training_checks.check_warmup(total_steps=5, warmup_steps=0) == []


def test_negatives_equal_to_positives() -> None:
    (finding,) = training_checks.check_negatives(["a", "b", "c"], ["b", "b", "a"])
    assert finding == Finding("negatives_equal_positives", "1 of 3 training negatives equal their positive")
    with pytest.raises(UserError, match=r"every one of the 2 training negatives equals its positive: a ranking loss learns nothing"):
        training_checks.check_negatives(["a", "a"], ["a", "a"])


def test_the_checks_see_the_batches_the_trainer_really_forms(compose, tmp_path: Path) -> None:
    # 30 entailment pairs on 3 premises: the no-duplicates sampler cannot put 16 distinct texts in a batch.
    rows = "premise\thypothesis\tlabel\n" + "".join(f"premise {i % 3}\thypothesis {i}\t0\n" for i in range(30))
    (tmp_path / "t.tsv").write_text(rows, encoding="utf-8")
    cfg = compose("model=tiny", "data=local", f"data.path={tmp_path / 't.tsv'}", "batch=16", "trainer.warmup_steps=100")
    train_set = data.shape_for_loss(data.load_nli(cfg.data), cfg.loss.shape, seed=0)
    model = models.build_model(cfg.model, seed=0)
    from embedsweep.run.losses import build_loss

    trainer = training.make_trainer(model, build_loss(cfg.loss, model), train_set, cfg.trainer, cfg.batch, cfg.loss.batch_sampler, tmp_path)
    names = {f.name for f in training_checks.check_trainer(trainer, train_set, cfg.batch, cfg.loss.batch_sampler)}
    assert names == {"batches_short", "warmup_covers_run"}


def test_a_run_with_nothing_to_learn_is_refused_and_a_doomed_one_is_tagged(train_cmd, mlflow_runs, tmp_path: Path) -> None:
    one = tmp_path / "one.tsv"
    one.write_text("premise\thypothesis\tlabel\na cat sits\ta cat is sitting\t0\n", encoding="utf-8")
    proc = train_cmd("model=tiny", "data=local", f"data.path={one}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: every one of the 1 training negatives equals its positive")
    (run,) = mlflow_runs()
    assert run.info.status == "FAILED" and "answer/pearson_cosine" not in run.data.metrics

    proc = train_cmd("model=tiny", "data=sample", "batch=512", "trainer.max_steps=2", "trainer.warmup_steps=100", "trainer.save_model=false")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stays inside the warmup" in proc.stdout + proc.stderr
    run = mlflow_runs()[-1]
    assert run.info.status == "FINISHED"
    assert run.data.tags["warning.warmup_covers_run"].startswith("the whole run (2 steps) stays inside the warmup (100 steps)")
    assert run.data.tags["warning.batch_exceeds_data"].startswith("batch=512 but the training data has only 80 rows")


def test_the_counts_add_up_from_rows_to_steps() -> None:
    # 80 rows at batch=32: the no_duplicates sampler forms 4 batches (one short), but the trainer counts
    # ceil(80 / 32) = 3 steps an epoch; the warning said "4 batches" and the run then "3 steps".
    (finding,) = training_checks.check_batches([32, 15, 20, 13], batch=32, rows=80, sampler="no_duplicates", per_epoch=3)
    assert finding.message == (
        "2 of 4 batches hold fewer than batch=32 rows (smallest 15): the no_duplicates sampler cannot fill them "
        "without repeating a text (the data repeats texts); the trainer counts 3 steps an epoch (80 rows at batch=32), "
        "so each epoch trains on 3 of the 4 batches"
    )
    plan = training_checks.StepPlan(rows=80, batch=32, per_epoch=3, epochs=1, max_steps=-1)
    assert plan.total == 3 and plan.describe(3) == "3 steps (1 epoch: 80 rows at batch=32)"
    assert plan.describe(2) == "2 of 3 steps (1 epoch: 80 rows at batch=32)"  # stopped early (pruned)
    assert training_checks.StepPlan(80, 32, 3, 2.5, -1).describe(8) == "8 steps (2.5 epochs: 80 rows at batch=32)"
    capped = training_checks.StepPlan(rows=337, batch=16, per_epoch=22, epochs=1, max_steps=2)
    assert capped.describe(2) == "2 steps (trainer.max_steps=2; an epoch of 337 rows at batch=16 is 22)"
