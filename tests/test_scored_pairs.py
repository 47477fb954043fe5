"""Scored pairs as training data, held-out splits and the overlap guard (data.py, splits.py, config.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import CONF
from embedsweep.checks import config
from embedsweep.run import data, splits
from embedsweep.errors import UserError

LOSSES = sorted(p.stem for p in (CONF / "loss").glob("*.yaml"))
SCORED_LOSSES = ["angle", "cosent", "cosine"]


def write_pairs(path: Path, n: int = 200, scale: float = 5.0, offset: int = 0) -> Path:
    """n distinct scored pairs (scores spread over [0, scale]) as TSV."""
    rows = [f"Sentence {i} about item {i % 7}.\tAnother sentence {i} on topic {i % 5}.\t{(i % 11) * scale / 10:g}" for i in range(offset, offset + n)]
    path.write_text("sentence1\tsentence2\tscore\n" + "\n".join(rows) + "\n")
    return path


def scored(path: Path, **extra) -> object:
    cfg = {"name": "mine", "kind": "scored", "source": "local", "path": str(path), "format": "auto", "limit": None,
           "columns": {"sentence1": "sentence1", "sentence2": "sentence2", "score": "score"}, "max_score": 5.0} | extra  # fmt: skip
    return OmegaConf.create(cfg)


# ---------------------------------------------------------------- reading scored pairs


def test_scored_pairs_load_from_every_format_with_column_mapping(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": ["One text.", "Two text."], "b": ["Uno.", "Dos."], "sim": [4.0, 1.0]})
    frame.to_csv(tmp_path / "p.csv", index=False)
    frame.to_json(tmp_path / "p.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "p.parquet")
    frame.to_csv(tmp_path / "p.tsv", sep="\t", index=False)
    for name in ("p.csv", "p.jsonl", "p.parquet", "p.tsv"):
        df = data.load_scored(scored(tmp_path / name, columns={"sentence1": "a", "sentence2": "b", "score": "sim"}), "data")
        assert df.to_dict("list") == {"sentence1": ["One text.", "Two text."], "sentence2": ["Uno.", "Dos."], "score": [0.8, 0.2]}, name


def test_a_score_beyond_the_scale_names_the_option_and_the_scale_found(tmp_path: Path) -> None:
    write_pairs(tmp_path / "p.tsv", n=30, scale=100)
    with pytest.raises(UserError) as info:
        data.load_scored(scored(tmp_path / "p.tsv"), "data")
    message = str(info.value)
    assert "score(s) outside [0, 5]" in message and "the file's scores run up to 100" in message
    assert message.endswith("set data.max_score to the top of your file's scale (now 5)")
    assert data.load_scored(scored(tmp_path / "p.tsv", max_score=100), "data")["score"].max() == 1.0


def test_scores_all_within_zero_and_one_on_a_larger_scale_get_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_pairs(tmp_path / "p.tsv", n=30, scale=1.0)
    with caplog.at_level(logging.WARNING):
        data.load_scored(scored(tmp_path / "p.tsv"), "data")
    assert "every score lies in [0, 1] but data.max_score is 5: if the file is scored 0-1, set data.max_score=1" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        data.load_scored(scored(tmp_path / "p.tsv", max_score=1), "data")
    assert caplog.text == ""


def test_scored_pairs_train_on_their_gold_scores(tmp_path: Path) -> None:
    rows = data.load_training(scored(write_pairs(tmp_path / "p.tsv", n=20)))
    shaped = data.shape_for_loss(rows, "pair_score", seed=0, kind="scored")
    assert shaped.column_names == ["sentence1", "sentence2", "score"]
    assert shaped["score"] == pytest.approx([(i % 11) / 10 for i in range(20)])


# ---------------------------------------------------------------- which loss trains on which data kind


@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_on_scored_pairs_is_allowed_or_refused_naming_what_works(compose, loss: str, tmp_path: Path) -> None:
    cfg = compose("data=scored_local", f"data.path={write_pairs(tmp_path / 'p.tsv')}", f"loss={loss}", "test=none")
    if loss in SCORED_LOSSES:
        config.validate(cfg)
        return
    with pytest.raises(UserError) as info:
        config.validate(cfg)
    assert str(info.value) == (
        f"loss={loss} trains on {cfg.loss.shape}, which cannot be made from scored pairs (data=scored_local); "
        f"with scored pairs use loss=angle or loss=cosent or loss=cosine"
    )


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_trains_on_nli_rows(compose, loss: str) -> None:
    config.validate(compose(f"loss={loss}"))  # the NLI-derived shapes keep working, cosent and angle included
    assert (("nli", compose(f"loss={loss}").loss.shape)) in data.DERIVATIONS


def test_holdout_needs_scored_training_data_and_sane_shares(compose, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^test=holdout holds out scored pairs of the training data, but data=snli_1pct holds NLI rows"):
        config.validate(compose("test=holdout"))
    path = write_pairs(tmp_path / "p.tsv")
    base = ["data=scored_local", f"data.path={path}", "loss=cosine", "test=holdout"]
    config.validate(compose(*base))
    with pytest.raises(UserError, match=r"^test.fraction=1.5 is not allowed: must be a number > 0 and < 1"):
        config.validate(compose(*base, "test.fraction=1.5"))
    with pytest.raises(UserError, match=r"^eval.fraction \+ test.fraction = 0.9 is not allowed"):
        config.validate(compose(*base, "eval=holdout", "eval.fraction=0.5", "test.fraction=0.4"))
    with pytest.raises(UserError, match=r"^eval.seed=1 and test.seed=0 differ"):
        config.validate(compose(*base, "eval=holdout", "eval.seed=1"))


# ---------------------------------------------------------------- the held-out split


def keys_of(df: pd.DataFrame) -> set[str]:
    return set(splits.pair_keys(df["sentence1"], df["sentence2"]))


def test_pair_keys_ignore_case_spacing_and_order() -> None:
    keys = splits.pair_keys(pd.Series(["A man  plays.", "a man is playing.", "Other."]), pd.Series(["A man is playing.", "A MAN PLAYS.", "x"]))
    assert keys[0] == keys[1] != keys[2]


def test_holdout_is_disjoint_by_pair_deterministic_and_stable_when_rows_are_appended(tmp_path: Path) -> None:
    rows = data.load_training(scored(write_pairs(tmp_path / "p.tsv", n=2000)))
    # the same pair again, swapped and in other case: it must land on the side of the original
    dup = pd.DataFrame({"sentence1": [rows.sentence2[0].upper()], "sentence2": [rows.sentence1[0]], "score": [0.5]})
    rows = pd.concat([rows, dup], ignore_index=True)
    keys = splits.pair_keys(rows.sentence1, rows.sentence2)
    sides = splits.holdout(keys, {"test": 0.2, "eval": 0.1}, seed=0)
    assert sides.iloc[-1] == sides.iloc[0]
    by_side = {side: set(keys[sides == side]) for side in ("train", "eval", "test")}
    assert not (by_side["train"] & by_side["test"]) and not (by_side["train"] & by_side["eval"]) and not (by_side["eval"] & by_side["test"])
    counts = sides.value_counts()
    assert 0.17 < counts["test"] / len(rows) < 0.23 and 0.08 < counts["eval"] / len(rows) < 0.12  # shares of 2,000 pairs
    assert splits.holdout(keys, {"test": 0.2, "eval": 0.1}, seed=0).equals(sides)  # deterministic
    assert not splits.holdout(keys, {"test": 0.2, "eval": 0.1}, seed=1).equals(sides)  # the seed picks another split
    more = pd.concat([keys, splits.pair_keys(pd.Series(["New pair one."]), pd.Series(["New pair two."]))], ignore_index=True)
    assert splits.holdout(more, {"test": 0.2, "eval": 0.1}, seed=0)[: len(keys)].equals(sides)  # appending moves nothing


def run_data(compose, *overrides: str):
    return data.load_run_data(compose(*overrides))


def test_run_data_with_holdout_test_and_eval(compose, tmp_path: Path) -> None:
    path = write_pairs(tmp_path / "p.tsv", n=400)
    sets = run_data(compose, "data=scored_local", f"data.path={path}", "loss=cosine", "test=holdout", "eval=holdout")
    train, eval_, test = keys_of(sets.train), keys_of(sets.frames["eval"]), keys_of(sets.frames["test"])
    assert len(train) + len(eval_) + len(test) == 400 and not (train & test) and not (train & eval_) and not (eval_ & test)
    assert sets.overlap.metrics() == {"overlap_train_rows_left_out": 0, "overlap_eval_in_train": 0, "overlap_test_in_eval": 0, "overlap_test_in_train": 0}
    assert sets.origin() == f"from 400 scored pairs, {len(test)} held out as test, {len(eval_)} held out as eval"
    assert sets.sources["test"] == f"20% held out of {path} (seed 0)"
    assert (sets.records["test"].name, sets.records["test"].uri) == ("scored_local (test holdout)", str(path.resolve()))
    again = run_data(compose, "data=scored_local", f"data.path={path}", "loss=cosine", "test=holdout", "eval=holdout")
    assert again.fingerprints == sets.fingerprints and len(set(sets.fingerprints.values())) == 3
    # the test set alone (what the end of a sweep scores its winner on) is the same held-out pairs
    alone = data.load_test(compose("data=scored_local", f"data.path={path}", "loss=cosine", "test=holdout", "eval=holdout"))
    assert alone.sentence1 == sets.test.sentence1 and alone.scores == sets.test.scores


def test_a_fingerprint_follows_content_not_row_order(tmp_path: Path) -> None:
    df = data.load_training(scored(write_pairs(tmp_path / "p.tsv", n=50)))
    keys = splits.pair_keys(df.sentence1, df.sentence2)
    shuffled = df.sample(frac=1, random_state=0)
    assert splits.fingerprint(keys, df.score) == splits.fingerprint(splits.pair_keys(shuffled.sentence1, shuffled.sentence2), shuffled.score)
    assert splits.fingerprint(keys, df.score) != splits.fingerprint(keys, df.score.where(df.index != 3, 0.123))  # one score changed


# ---------------------------------------------------------------- the overlap guard


def test_training_pairs_in_the_test_set_are_left_out_and_counted(compose, tmp_path: Path) -> None:
    train = write_pairs(tmp_path / "train.tsv", n=300)
    test = write_pairs(tmp_path / "test.tsv", n=100, offset=250)  # 50 of its pairs are training pairs
    sets = run_data(compose, "data=scored_local", f"data.path={train}", "loss=cosine", "test=local", f"test.path={test}")
    assert sets.overlap.train_in_test == 50 and sets.overlap.test_in_train == 50 and len(sets.train) == 250
    assert not keys_of(sets.train) & keys_of(sets.frames["test"])
    assert sets.origin() == "from 300 scored pairs, 50 left out as test pairs"
    assert sets.info["overlap_train_rows_left_out"] == 50


def test_eval_pairs_seen_in_training_are_counted(compose, tmp_path: Path) -> None:
    train = write_pairs(tmp_path / "train.tsv", n=300)
    eval_ = write_pairs(tmp_path / "eval.tsv", n=40, offset=290)  # 10 eval pairs are training pairs
    sets = run_data(compose, "data=scored_local", f"data.path={train}", "loss=cosine", "eval=local", f"eval.path={eval_}", "test=none")
    assert (sets.overlap.eval_in_train, len(sets.train), sets.test) == (10, 300, None)


def test_a_test_set_that_is_the_eval_set_is_refused(compose, tmp_path: Path) -> None:
    pairs = write_pairs(tmp_path / "pairs.tsv", n=60)
    args = ("test=local", f"test.path={pairs}", "eval=local", f"eval.path={pairs}")
    with pytest.raises(UserError) as info:
        run_data(compose, *args)
    assert str(info.value) == (
        f"the test set is the eval set: 60 of its 60 pairs ({pairs}) are eval pairs ({pairs}); a score on pairs the sweep "
        "selected on is not a held-out score; choose another test set (or test=holdout), or set allow_test_overlap=true "
        "to test on them deliberately"
    )
    assert run_data(compose, *args, "allow_test_overlap=true").overlap.test_in_eval == 60  # deliberately


def test_a_test_set_mostly_inside_the_training_data_is_refused(compose, tmp_path: Path) -> None:
    train = write_pairs(tmp_path / "train.tsv", n=300)
    test = write_pairs(tmp_path / "test.tsv", n=40, offset=270)  # 30 of 40 inside training
    args = ("data=scored_local", f"data.path={train}", "loss=cosine", "test=local", f"test.path={test}")
    with pytest.raises(UserError, match=rf"^the test set lies inside the training data: 30 of its 40 pairs \({test}\) are training pairs \({train}\)"):
        run_data(compose, *args)
    allowed = run_data(compose, *args, "allow_test_overlap=true")
    assert allowed.overlap.allowed and len(allowed.train) == 300  # deliberately: nothing left out


def test_scored_training_on_stsb_train_with_the_packaged_test_set_is_refused(compose, tmp_path: Path) -> None:
    """The packaged test set is 1,000 STS-B *train* caption pairs: training on STS-B train and testing
    there would score training pairs."""
    from importlib import resources

    packaged = Path(str(resources.files("embedsweep") / "resources" / "stsb" / "train_cc_by_sa.tsv"))
    frame = pd.read_csv(packaged, sep="\t", quoting=3)[["sentence1", "sentence2", "score"]]
    frame.to_csv(tmp_path / "train.tsv", sep="\t", index=False, quoting=3)
    with pytest.raises(UserError, match=r"^the test set lies inside the training data: 1000 of its 1000 pairs \(packaged stsb/train_cc_by_sa.tsv\)"):
        run_data(compose, "data=scored_local", f"data.path={tmp_path / 'train.tsv'}", "loss=cosine")


# ---------------------------------------------------------------- end to end: the real command on scored pairs


@pytest.fixture(scope="module")
def scored_grid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object, list]:
    """`train.py -m data=scored_local loss=cosine,cosent,angle test=holdout` on a tiny model: one
    process; returns the folder, the data file, the MLflow client and the runs."""
    import os
    import subprocess
    import sys

    from mlflow import MlflowClient

    from conftest import OFFLINE_ENV, ROOT

    cwd = tmp_path_factory.mktemp("scored")
    path = write_pairs(cwd / "pairs.tsv", n=300)
    args = ["-m", "model=tiny", "data=scored_local", f"data.path={path}", "loss=cosine,cosent,angle", "test=holdout",
            "batch=16", "trainer.max_steps=4", "trainer.lr=1e-3", "trainer.warmup_ratio=0", "promote.register_random_init=true"]  # fmt: skip
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=os.environ | OFFLINE_ENV,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd}/outputs/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("embedsweep").experiment_id])
    return cwd, path, client, runs


def test_each_scored_loss_trains_on_the_pairs_left_after_the_holdout(scored_grid) -> None:
    _, path, _, runs = scored_grid
    children = {r.data.params["loss"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert sorted(children) == SCORED_LOSSES
    rows = data.load_training(scored(path))
    test_pairs = int((splits.holdout(splits.pair_keys(rows.sentence1, rows.sentence2), {"test": 0.2}, seed=0) == "test").sum())
    for loss, run in children.items():
        m = run.data.metrics
        assert run.info.status == "FINISHED", loss
        assert (m["sets/train_rows"], m["history/steps"], m["sets/overlap_train_rows_left_out"]) == (300 - test_pairs, 4, 0), loss
        # Four steps at lr 1e-3 move a random model: its eval score by more than float noise between two encodings.
        assert abs(m["answer/pearson_cosine"] - m["baseline/pearson_cosine"]) > 1e-4, (loss, m["answer/pearson_cosine"], m["baseline/pearson_cosine"])
        assert not any(k.startswith("test/") for k in m)  # a sweep's jobs never see the test set


def test_every_run_records_its_training_eval_and_test_data_as_mlflow_datasets(scored_grid) -> None:
    _, path, client, runs = scored_grid
    for run in (r for r in runs if "mlflow.parentRunId" in r.data.tags):
        inputs = client.get_run(run.info.run_id).inputs.dataset_inputs  # read back through MLflow's API
        by_context = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset for i in inputs}
        assert sorted(by_context) == ["eval", "test", "training"]
        assert (by_context["training"].name, by_context["test"].name) == ("scored_local", "scored_local (test holdout)")
        assert path.resolve().as_posix() in by_context["training"].source and path.resolve().as_posix() in by_context["test"].source
        assert "stsb/validation_cc_by_sa.tsv" in by_context["eval"].source
        tags = run.data.tags
        assert [by_context[c].digest for c in ("training", "eval", "test")] == [tags[f"fingerprint.{k}"] for k in ("train", "eval", "test")]
        assert '"num_rows": %d' % run.data.metrics["sets/train_rows"] in by_context["training"].profile


def test_the_winner_is_tested_on_the_held_out_pairs(scored_grid) -> None:
    """The end of the sweep scores its winner on the same held-out pairs that every job left out."""
    from sentence_transformers import SentenceTransformer

    from embedsweep.run import evaluate

    _, path, client, runs = scored_grid
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.data.tags["promoted_version"] == "1"
    version = client.get_model_version("tiny-similarity", "1")
    assert version.tags["test_set"] == f"20% held out of {path} (seed 0)"
    best = client.get_run(version.tags["best_run_id"])
    model = SentenceTransformer(str(Path(best.data.tags["hydra_output_dir"], "model")))
    pairs = data.load_test(OmegaConf.create({"data": scored(path, name="scored_local"), "test": {"source": "holdout", "fraction": 0.2, "seed": 0},
                                             "eval": {"source": "packaged", "name": "stsb_captions", "path": "stsb/validation_cc_by_sa.tsv",
                                                      "format": "tsv", "columns": {"sentence1": "sentence1", "sentence2": "sentence2", "score": "score"},
                                                      "max_score": 5.0}}))  # fmt: skip
    rescored = evaluate.score(model, evaluate.sts_evaluator(pairs, batch_size=64))
    assert parent.data.metrics["test/pearson_cosine"] == pytest.approx(rescored["pearson_cosine"], abs=1e-6)


def test_a_sweep_over_a_loss_the_data_cannot_feed_is_refused_before_anything_runs(train_cmd, tmp_path: Path) -> None:
    path = write_pairs(tmp_path / "pairs.tsv")
    proc = train_cmd("-m", "model=tiny", "data=scored_local", f"data.path={path}", "loss=cosine,mnr", "test=holdout")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: loss=mnr trains on triplets, which cannot be made from scored pairs (data=scored_local); "
        "with scored pairs use loss=angle or loss=cosent or loss=cosine"
    )
    assert not (tmp_path / "outputs" / "mlflow.db").exists()  # nothing recorded


@pytest.mark.slow
def test_the_offline_sts_recipe_improves_minilm_on_validation_and_held_out_test(train_cmd, mlflow_runs, shared_data: Path) -> None:
    """all-MiniLM-L6-v2 on STS-B train pairs for a few dozen steps: validation rises above the untouched
    model's, and so does the score on the held-out fifth of the training file."""
    proc = train_cmd("experiment=sts_offline", f"paths.data_dir={shared_data}", "trainer.max_steps=40", "trainer.eval_steps=20", timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = mlflow_runs("sts")
    m = run.data.metrics
    assert (m["history/steps"], m["sets/train_rows"], m["sets/eval_pairs"]) == (40, 4631, 1500)
    assert m["baseline/pearson_cosine"] == pytest.approx(0.8696, abs=5e-4)  # all-MiniLM-L6-v2 on STS-B validation
    assert m["answer/pearson_cosine"] > m["baseline/pearson_cosine"] + 0.003 and m["answer/spearman_cosine"] > m["baseline/spearman_cosine"]
    assert m["test/pairs"] == 1118 and m["test/pearson_cosine"] > m["test/baseline_pearson_cosine"]
    assert "vs the untouched model on the same test pairs: pearson_cosine" in proc.stdout
