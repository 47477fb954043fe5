"""Reading, cleaning and shaping data: the packaged samples, local files, and the per-loss shapes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from embedsweep.run import data
from embedsweep.errors import UserError


def local(path: Path, **extra) -> object:
    cfg = {"source": "local", "path": str(path), "format": "auto", "limit": None,
           "columns": {"premise": "premise", "hypothesis": "hypothesis", "label": "label"}} | extra  # fmt: skip
    return OmegaConf.create(cfg)


def local_sts(path: Path, **extra) -> object:
    cfg = {"source": "local", "path": str(path), "format": "auto", "limit": None, "max_score": 5.0,
           "columns": {"sentence1": "sentence1", "sentence2": "sentence2", "score": "score"}} | extra  # fmt: skip
    return OmegaConf.create(cfg)


@pytest.fixture
def nli(compose) -> pd.DataFrame:
    """The hand-written sample: every label, and a contradiction for every premise."""
    return data.load_nli(compose("data=sample").data)


# ---------------------------------------------------------------- packaged samples


def test_sample_nli_is_balanced_and_clean(nli: pd.DataFrame) -> None:
    assert len(nli) >= 150
    counts = Counter(nli["label"])
    assert set(counts) == {0, 1, 2} and min(counts.values()) >= 50
    assert not nli.duplicated(["premise", "hypothesis"]).any()
    assert (nli["premise"].str.strip() != "").all() and (nli["hypothesis"].str.strip() != "").all()


def test_sample_sts_scores_span_the_range(compose) -> None:
    sts = data.load_sts(compose("eval=sample").eval)
    assert len(sts.scores) >= 60
    assert min(sts.scores) < 0.1 and max(sts.scores) > 0.9  # divided by 5
    bins = Counter(min(int(s * 5), 4) for s in sts.scores)
    assert all(bins[b] >= 10 for b in range(5)), bins


# ---------------------------------------------------------------- shaping for each loss


def test_softmax_keeps_pairs_and_three_labels(nli: pd.DataFrame) -> None:
    shaped = data.shape_for_loss(nli, "pair_class", seed=0)
    assert shaped.column_names == ["premise", "hypothesis", "label"]
    assert sorted(set(shaped["label"])) == [0, 1, 2]
    assert len(shaped) == len(nli)


def test_cosine_maps_entailment_to_one_and_the_rest_to_zero(nli: pd.DataFrame) -> None:
    shaped = data.shape_for_loss(nli, "pair_score", seed=0)
    assert shaped.column_names == ["sentence1", "sentence2", "score"]
    expected = [1.0 if label == 0 else 0.0 for label in nli["label"]]
    assert shaped["score"] == expected
    assert shaped["sentence1"] == nli["premise"].tolist()


def test_mnr_keeps_only_entailment_pairs_and_no_label(nli: pd.DataFrame) -> None:
    shaped = data.shape_for_loss(nli, "triplets", seed=0)
    assert shaped.column_names == ["anchor", "positive", "negative"]  # no label/score column reaches the loss
    entailed = nli[nli["label"] == 0]
    assert len(shaped) == len(entailed)
    assert set(zip(shaped["anchor"], shaped["positive"])) == set(zip(entailed["premise"], entailed["hypothesis"]))
    # Soft negatives: the same hypotheses shuffled, never a row's own positive.
    assert sorted(shaped["negative"]) == sorted(shaped["positive"])
    assert all(n != p for n, p in zip(shaped["negative"], shaped["positive"]))
    assert data.shape_for_loss(nli, "triplets", seed=0)["negative"] == shaped["negative"]  # seeded


def test_mnr_without_entailment_rows_is_a_clear_error(nli: pd.DataFrame) -> None:
    with pytest.raises(UserError, match="no entailment"):
        data.shape_for_loss(nli[nli["label"] != 0], "triplets", seed=0)


def test_unknown_shape_names_the_allowed_ones(nli: pd.DataFrame) -> None:
    with pytest.raises(UserError, match="allowed: pair_class, pair_score, triplets"):
        data.shape_for_loss(nli, "quadruplets", seed=0)


def test_no_duplicate_text_within_an_mnr_batch(compose) -> None:
    """The no-duplicates sampler keeps a text out of a batch that already has it (false negatives)."""
    from embedsweep.run import losses, models, training

    cfg = compose("model=tiny", "loss=mnr", "batch=16")
    nli = data.load_nli(cfg.data)
    # Repeat premises so duplicates would be likely without the sampler.
    nli = pd.concat([nli, nli.assign(hypothesis=nli["hypothesis"] + " Indeed.")], ignore_index=True)
    shaped = data.shape_for_loss(nli, cfg.loss.shape, seed=0)
    model = models.build_model(cfg.model, seed=0)
    trainer = training.make_trainer(
        model, losses.build_loss(cfg.loss, model), shaped, cfg.trainer, cfg.batch, cfg.loss.batch_sampler,
        output_dir=Path("/tmp/unused"),
    )  # fmt: skip
    batches = list(trainer.get_train_dataloader().batch_sampler)
    assert sum(len(b) for b in batches) > 0
    for batch in batches:
        texts = [shaped[i][col] for i in batch for col in ("anchor", "positive", "negative")]
        assert len(texts) == len(set(texts))


# ---------------------------------------------------------------- local files


def test_tsv_with_quote_characters_is_read_verbatim(tmp_path: Path) -> None:
    rows = [
        ("premise", "hypothesis", "label"),
        ('"Stop," she said, "right there."', "She spoke.", "0"),
        ('He wrote "ok" twice', '"ok" was written', "entailment"),
        ("A 5\" screen is small.", "The screen is large.", "2"),
        ("Nobody came.", "Someone came.", "contradiction"),
        ("None", "NA", "1"),  # texts that pandas would turn into nulls by default
    ]
    path = tmp_path / "train.tsv"
    path.write_text("\n".join("\t".join(r) for r in rows) + "\n", encoding="utf-8")
    nli = data.load_nli(local(path))
    assert nli["premise"].tolist() == [r[0] for r in rows[1:]]
    assert nli["hypothesis"].tolist() == [r[1] for r in rows[1:]]
    assert nli["label"].tolist() == [0, 0, 2, 2, 1]


def test_csv_jsonl_parquet_and_column_mapping(tmp_path: Path) -> None:
    df = pd.DataFrame({"s1": ["a b", "c d", "e f"], "s2": ["b a", "d c", "f e"], "gold": [0, 1, 2]})
    df.to_csv(tmp_path / "t.csv", index=False)
    df.to_json(tmp_path / "t.jsonl", orient="records", lines=True)
    df.to_parquet(tmp_path / "t.parquet")
    mapping = {"premise": "s1", "hypothesis": "s2", "label": "gold"}
    for name in ("t.csv", "t.jsonl", "t.parquet"):
        nli = data.load_nli(local(tmp_path / name, columns=mapping))
        assert nli.to_dict("list") == {"premise": ["a b", "c d", "e f"], "hypothesis": ["b a", "d c", "f e"], "label": [0, 1, 2]}


def test_rows_without_gold_label_or_text_are_dropped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "t.tsv"
    path.write_text("premise\thypothesis\tlabel\na\tb\t0\nc\td\t-\n \te\t1\nf\tg\t2\n", encoding="utf-8")
    nli = data.load_nli(local(path))
    assert nli["label"].tolist() == [0, 2]
    assert (nli.attrs["dropped_no_label"], nli.attrs["dropped_empty"]) == (1, 1)


def test_limit_takes_the_first_rows(compose) -> None:
    cfg = compose("data.limit=10").data
    assert len(data.load_nli(cfg)) == 10


@pytest.mark.parametrize(
    "content,message",
    [
        ("premise\thypothesis\tlabel\na\tb\t7\n", r"labels outside the allowed set, e.g. \['7'\]; allowed: 0/1/2"),
        ("premise\thyp\tlabel\na\tb\t0\n", r"lacks column\(s\) \['hypothesis'\]; found \['premise', 'hyp', 'label'\]"),
        ("", "empty"),
        ("premise\thypothesis\tlabel\n", "no rows"),
    ],
)
def test_bad_files_give_one_clear_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        data.load_nli(local(path))


def test_missing_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="data file not found: .*nope.tsv"):
        data.load_nli(local(tmp_path / "nope.tsv"))
    latin = tmp_path / "latin.tsv"
    latin.write_bytes("premise\thypothesis\tlabel\ncaf\xe9\tb\t0\n".encode("latin-1"))
    with pytest.raises(UserError, match="not valid UTF-8"):
        data.load_nli(local(latin))


def test_sts_scores_are_scaled_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "MIN_EVAL_PAIRS", 2)
    path = tmp_path / "sts.tsv"
    path.write_text('sentence1\tsentence2\tscore\n"Hi"\tHello\t5.0\na\tb\t0\nc\td\t2.5\n', encoding="utf-8")
    sts = data.load_sts(local_sts(path))
    assert sts.scores == [1.0, 0.0, 0.5] and sts.sentence1[0] == '"Hi"'
    path.write_text("sentence1\tsentence2\tscore\na\tb\t6\nc\td\t1\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"outside \[0, 5\]"):
        data.load_sts(local_sts(path))


def _sts_file(path: Path, scores: list[float], same_text: bool = False) -> Path:
    rows = "".join(f"s{i}\t{'s' if same_text else 't'}{i}\t{score}\n" for i, score in enumerate(scores))
    path.write_text("sentence1\tsentence2\tscore\n" + rows, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("scores", "same_text", "message"),
    [
        ([1.0, 2.0] * 9 + [3.0], False, "19 scored pair(s) are too few for a meaningful correlation; need at least 20 (a larger file, or a larger eval.limit)"),
        ([3.0] * 40, False, "all 40 gold scores are equal (0.6 after scaling): a correlation needs scores that vary"),
        ([1.0, 4.0] * 20, True, "in all 40 pairs both sentences are the same text: every cosine would be 1"),
    ],
)  # fmt: skip
def test_eval_data_that_cannot_measure_is_refused_at_load(tmp_path: Path, scores: list[float], same_text: bool, message: str) -> None:
    path = _sts_file(tmp_path / "sts.tsv", scores, same_text)
    with pytest.raises(UserError) as info:
        data.load_sts(local_sts(path))
    assert str(info.value) == f"{path}: {message}"
    data.load_sts(local_sts(_sts_file(tmp_path / "ok.tsv", [1.0, 4.0] * 10)))  # 20 varied pairs: fine


def test_degenerate_eval_data_fails_before_any_training(train_cmd, mlflow_runs, tmp_path: Path) -> None:
    path = _sts_file(tmp_path / "flat.tsv", [2.0] * 50)
    proc = train_cmd("model=tiny", "eval=local", f"eval.path={path}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: {path}: all 50 gold scores are equal (0.4 after scaling): a correlation needs scores that vary"
    (run,) = mlflow_runs()
    assert run.info.status == "FAILED" and "history/steps" not in run.data.metrics and "baseline/pearson_cosine" not in run.data.metrics


def test_real_stsb_and_mnli_files_load(shared_data: Path) -> None:
    sts = data.load_sts(local_sts(shared_data / "stsb" / "validation.tsv"))
    assert len(sts.scores) == 1500
    assert sts.sentence1[0].strip() != "" and 0.0 <= min(sts.scores) and max(sts.scores) <= 1.0
    nli = data.load_nli(local(shared_data / "mnli" / "train.tsv", limit=5000))
    assert len(nli) == 5000 and set(nli["label"]) == {0, 1, 2}


def test_hard_negatives_are_contradictions_of_the_same_premise(nli: pd.DataFrame) -> None:
    shaped = data.shape_for_loss(nli, "hard_triplets", seed=0)
    assert shaped.column_names == ["anchor", "positive", "negative"]
    contradiction = {p: h for p, h, l in nli[["premise", "hypothesis", "label"]].itertuples(index=False) if l == 2}
    # The sample has a contradiction for every premise, so every negative is hard.
    assert shaped["negative"] == [contradiction[a] for a in shaped["anchor"]]
    # Premises without a contradiction fall back to a soft negative (another entailment hypothesis).
    no_contra = nli[~((nli["label"] == 2) & nli["premise"].isin(shaped["anchor"][:5]))]
    mixed = data.shape_for_loss(no_contra, "hard_triplets", seed=0)
    soft = [n for a, n in zip(mixed["anchor"], mixed["negative"]) if a in shaped["anchor"][:5]]
    assert len(soft) == 5 and set(soft) <= set(mixed["positive"])


# ---------------------------------------------------------------- packaged real data (the defaults)


def test_packaged_real_data_is_the_published_files_with_attribution() -> None:
    import hashlib
    from importlib import resources

    root = resources.files("embedsweep") / "resources"
    notice = (root / "NOTICE").read_text()
    # sha256 as published with the source (SOURCES.md of the data folder): the files are unchanged copies.
    published = {
        "snli/train_1pct.tsv": "dd5ab86c794f51026a90f794398cad6dafe1afc6557e4e4401ae2cb104b88be8",
        "stsb/validation_cc_by_sa.tsv": "2cd22c1d92cb27f934e55ea9d32a834ae35f961a1332af51cb31f96674ad3c79",
        "stsb/train_cc_by_sa.tsv": "f486893dddebac5c5b99f87a6ac892ab8f0ea088367db02feab0c249f1838eb5",
    }
    for name, digest in published.items():
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == digest, name
        assert name in notice and digest in notice, f"NOTICE lacks {name} or its sha256"
    shipped = {str(p.relative_to(Path(str(root)))) for p in Path(str(root)).rglob("*.tsv")}
    assert all(name in notice for name in shipped), "every shipped data file is attributed in NOTICE"
    for credit in ("CC BY-SA 4.0", "Bowman et al., 2015", "Cer et al., 2017", "Rashtchian et al., 2010"):
        assert credit in notice


def test_the_default_data_is_real_snli_and_stsb_captions(compose) -> None:
    cfg = compose()
    full = data.load_nli(OmegaConf.merge(cfg.data, {"limit": None}))
    assert len(full) == 5498 and Counter(full["label"]) == {0: 1806, 1: 1786, 2: 1906}
    assert len(data.load_nli(cfg.data)) == cfg.data.limit  # the first rows: the file's order is random
    sts = data.load_sts(cfg.eval)
    assert len(sts.scores) == 375 and sts.sentence1[0] == "A cat standing on tree branches." and sts.scores[0] == 3.6 / 5
    held_out = data.load_sts(OmegaConf.merge(cfg.eval, {"path": "stsb/train_cc_by_sa.tsv"}))
    assert len(held_out.scores) == 1000
