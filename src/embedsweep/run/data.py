"""Training and evaluation data: read rows from a source, clean them, shape them for a loss.

Sources (`source:` in conf/data, conf/eval and conf/test): `packaged` (small files shipped in this
package), `hub` (a Hugging Face dataset), `local` (a TSV/CSV/JSONL/Parquet file), and for eval and test
`holdout` (pairs kept aside from the training file, splits.py). Every source yields the same canonical
columns: premise/hypothesis/label for NLI rows, sentence1/sentence2/score for scored pairs.

Training data comes in two kinds (`kind:` in conf/data): `nli` rows (premise, hypothesis, label; or
unlabelled positive pairs) and `scored` pairs (sentence1, sentence2, a similarity score). A loss says
which columns it trains on (`shape:` in conf/loss); DERIVATIONS says how each kind gives each shape.

Local files are read with pandas, not `datasets.load_dataset("csv")`: the latter writes an Arrow
cache per file and keeps pandas' NA parsing, which turns texts such as "None" or "NA" into nulls.
"""

from __future__ import annotations

import csv
import logging
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pandas as pd
from omegaconf import DictConfig

from embedsweep.checks import hub

from embedsweep.run import splits
from embedsweep.errors import UserError

if TYPE_CHECKING:
    from datasets import Dataset

log = logging.getLogger(__name__)

NLI_LABELS = {"entailment": 0, "neutral": 1, "contradiction": 2}
ENTAILMENT = NLI_LABELS["entailment"]
_NO_GOLD = {"-", "", "-1"}  # GLUE files use "-", the HF SNLI dataset uses -1
FORMATS = ("tsv", "csv", "jsonl", "parquet")
# Fewest scored pairs we evaluate on. Below about 20 pairs a correlation says little: the 95% interval
# of a Pearson r of 0.8 over 20 pairs already spans 0.55-0.92 (Fisher z), wider than the gaps between
# the losses we compare; over 10 pairs it spans 0.34-0.95.
MIN_EVAL_PAIRS = 20


# ---------------------------------------------------------------- reading


def _detect_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        if fmt not in FORMATS:
            raise UserError(f"unknown data format {fmt!r} for {path}; allowed: auto, {', '.join(FORMATS)}")
        return fmt
    suffix = path.suffix.lower().lstrip(".")
    fmt = {"tab": "tsv", "json": "jsonl", "ndjson": "jsonl", "pq": "parquet"}.get(suffix, suffix)
    if fmt not in FORMATS:
        raise UserError(f"cannot tell the format of {path} from its extension; set format= to one of {', '.join(FORMATS)}")
    return fmt


def read_table(path: Path, fmt: str = "auto") -> pd.DataFrame:
    """Read a data file as strings. TSV is read with quoting off: fields may start with a quote."""
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    fmt = _detect_format(path, fmt)
    text_opts = dict(dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8")
    try:
        if fmt == "tsv":
            df = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, **text_opts)
        elif fmt == "csv":
            df = pd.read_csv(path, **text_opts)
        elif fmt == "jsonl":
            df = pd.read_json(path, lines=True, dtype=False)
        else:
            df = pd.read_parquet(path)
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not valid UTF-8 (byte {exc.start}): re-encode it as UTF-8") from exc
    except pd.errors.EmptyDataError as exc:
        raise UserError(f"data file is empty: {path}") from exc
    except (pd.errors.ParserError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot parse {path} as {fmt}: {first}") from exc
    if df.empty:
        raise UserError(f"data file has no rows: {path}")
    return df


def _read_source(cfg: DictConfig, key: str) -> tuple[pd.DataFrame, str]:
    """Rows of the configured source, limited to the first `cfg.limit`, and a name for messages."""
    limit = cfg.get("limit")
    if cfg.source == "packaged":
        path = Path(str(resources.files("embedsweep") / "resources" / cfg.path))
        df, where = read_table(path, cfg.get("format", "auto")), f"packaged {cfg.path}"
    elif cfg.source == "local":
        path = Path(str(cfg.path)).expanduser()
        df, where = read_table(path, cfg.get("format", "auto")), str(path)
    elif cfg.source == "hub":
        df, where = _read_hub(cfg, limit, key), f"hub {cfg.path}/{cfg.get('subset')}[{cfg.split}]"
    else:
        raise UserError(f"unknown {key} source {cfg.source!r}; allowed: packaged, local, hub")
    if limit is not None:
        df = df.head(int(limit))
    return df, where


@dataclass(frozen=True)
class SetRecord:
    """Where a set's rows come from, for its dataset record: a file (`uri`), or a Hub dataset."""

    name: str
    uri: str  # a file path, or the Hub dataset's id
    hub_split: str | None = None  # set for Hub datasets
    hub_subset: str | None = None


def set_record(cfg: DictConfig, name: str | None = None) -> SetRecord:
    name = name or str(cfg.name)
    if cfg.source == "packaged":
        return SetRecord(name, str(Path(str(resources.files("embedsweep") / "resources" / cfg.path)).resolve()))
    if cfg.source == "local":
        return SetRecord(name, str(Path(str(cfg.path)).expanduser().resolve()))
    return SetRecord(name, str(cfg.path), str(cfg.split), cfg.get("subset"))


def _read_hub(cfg: DictConfig, limit: int | None, key: str) -> pd.DataFrame:
    split = f"{cfg.split}[:{int(limit)}]" if limit else cfg.split

    def load() -> pd.DataFrame:
        from datasets import load_dataset

        return load_dataset(cfg.path, cfg.get("subset"), split=split).to_pandas()

    what = f"dataset {cfg.path}/{cfg.get('subset')} [{split}]"
    return hub.from_hub(load, what, f"{key}=local {key}.path=path/to/file.tsv")


def _canonical(df: pd.DataFrame, columns: DictConfig, where: str, key: str) -> pd.DataFrame:
    """Rename the file's columns to ours, failing with the expected and found names."""
    wanted = {ours: str(theirs) for ours, theirs in columns.items() if theirs is not None}
    missing = [theirs for theirs in wanted.values() if theirs not in df.columns]
    if missing:
        raise UserError(
            f"{where} lacks column(s) {missing}; found {list(df.columns)}; "
            f"map them with {key}.columns.<name>=<column in the file>"
        )
    return df[list(wanted.values())].rename(columns={v: k for k, v in wanted.items()})


def _drop_empty_text(df: pd.DataFrame, text_cols: list[str]) -> tuple[pd.DataFrame, int]:
    texts = df[text_cols].astype(str).apply(lambda s: s.str.strip())
    keep = (texts != "").all(axis=1) & df[text_cols].notna().all(axis=1)
    return df[keep], int((~keep).sum())


# ---------------------------------------------------------------- NLI training rows


def _nli_label(value: object) -> int | None:
    """0/1/2 or entailment/neutral/contradiction -> int; '-' (no gold label) -> None."""
    text = str(value).strip().lower()
    if text in _NO_GOLD:
        return None
    if text in NLI_LABELS:
        return NLI_LABELS[text]
    try:
        number = float(text)
    except ValueError:
        number = -1.0
    if number in (0.0, 1.0, 2.0):
        return int(number)
    raise ValueError(value)


def load_nli(cfg: DictConfig) -> pd.DataFrame:
    """NLI rows as premise / hypothesis / label (0 entailment, 1 neutral, 2 contradiction).

    With `columns.label: null` the file holds positive pairs only (e.g. paraphrases): every row is
    taken as an entailment, which only the ranking losses (shape `triplets`) can use.
    """
    raw, where = _read_source(cfg, "data")
    df = _canonical(raw, cfg.columns, where, "data")
    if "label" not in df.columns:
        df = df.assign(label=ENTAILMENT)
    bad: list[object] = []

    def parse(value: object) -> int | None:
        try:
            return _nli_label(value)
        except ValueError:
            bad.append(value)
            return None

    labels = df["label"].map(parse)
    if bad:
        shown = sorted({str(b) for b in bad})[:5]
        raise UserError(
            f"{where}: {len(bad)} row(s) have labels outside the allowed set, e.g. {shown}; "
            f"allowed: 0/1/2 or entailment/neutral/contradiction ('-' = no gold label, dropped)"
        )
    df = df.assign(label=labels)
    no_gold = int(df["label"].isna().sum())
    df = df[df["label"].notna()]
    df, empty = _drop_empty_text(df, ["premise", "hypothesis"])
    if no_gold or empty:
        log.info("%s: dropped %d row(s) without a gold label and %d with empty text", where, no_gold, empty)
    if df.empty:
        raise UserError(f"{where}: no usable rows left after dropping rows without label or text")
    df = df.astype({"premise": str, "hypothesis": str, "label": int}).reset_index(drop=True)
    df.attrs.update(source=where, dropped_no_label=no_gold, dropped_empty=empty)
    return df


# ---------------------------------------------------------------- STS evaluation pairs


@dataclass(frozen=True)
class StsPairs:
    sentence1: list[str]
    sentence2: list[str]
    scores: list[float]  # already divided by max_score: in [0, 1]
    source: str


def load_scored(cfg: DictConfig, key: str) -> pd.DataFrame:
    """Scored pairs as sentence1 / sentence2 / score, the score divided by `max_score` (so in [0, 1]).
    `key` is the config group they come from (`data`, `eval` or `test`), named in error messages."""
    raw, where = _read_source(cfg, key)
    df = _canonical(raw, cfg.columns, where, key)
    df, empty = _drop_empty_text(df, ["sentence1", "sentence2"])
    scores = pd.to_numeric(df["score"], errors="coerce")
    max_score = float(cfg.max_score)
    bad = df["score"][scores.isna() | (scores < 0) | (scores > max_score)]
    if len(bad):
        found = f"; the file's scores run up to {scores.max():g}" if scores.notna().any() else ""
        raise UserError(
            f"{where}: {len(bad)} score(s) outside [0, {max_score:g}], e.g. {sorted(map(str, bad))[:5]}{found}; "
            f"set {key}.max_score to the top of your file's scale (now {max_score:g})"
        )
    if max_score > 1 and len(scores) and scores.max() <= 1:
        log.warning("%s: every score lies in [0, 1] but %s.max_score is %g: if the file is scored 0-1, set %s.max_score=1", where, key, max_score, key)
    if empty:
        log.info("%s: dropped %d pair(s) with empty text", where, empty)
    out = pd.DataFrame({
        "sentence1": df["sentence1"].astype(str).tolist(),
        "sentence2": df["sentence2"].astype(str).tolist(),
        "score": (scores / max_score).astype(float).tolist(),
    })  # fmt: skip
    out.attrs.update(source=where, dropped_no_label=0, dropped_empty=empty)
    return out


def sts_pairs(df: pd.DataFrame, source: str) -> StsPairs:
    """Scored pairs (scores already in [0, 1]) for the STS evaluator, refused if they measure nothing."""
    pairs = StsPairs(df["sentence1"].tolist(), df["sentence2"].tolist(), df["score"].astype(float).tolist(), source)
    check_measurable(pairs)
    return pairs


def load_sts(cfg: DictConfig, key: str = "eval") -> StsPairs:
    """Scored sentence pairs for the STS evaluator, scores scaled to [0, 1]. `key` is the config
    group they come from (`eval` or `test`), named in error messages."""
    df = load_scored(cfg, key)
    return sts_pairs(df, df.attrs["source"])


def check_measurable(pairs: StsPairs, minimum: int | None = None) -> None:
    """Refuse pairs on which a correlation cannot measure anything: too few (below `minimum`, default
    MIN_EVAL_PAIRS), gold scores that do not vary, or pairs whose two sentences are all identical
    (every cosine is 1). For any evaluation set."""
    minimum = MIN_EVAL_PAIRS if minimum is None else minimum
    n = len(pairs.scores)
    if n < minimum:
        raise UserError(
            f"{pairs.source}: {n} scored pair(s) are too few for a meaningful correlation; need at least {minimum} "
            f"(a larger file, or a larger eval.limit)"
        )
    if len(set(pairs.scores)) < 2:
        raise UserError(f"{pairs.source}: all {n} gold scores are equal ({pairs.scores[0]:g} after scaling): a correlation needs scores that vary")
    if all(a == b for a, b in zip(pairs.sentence1, pairs.sentence2)):
        raise UserError(f"{pairs.source}: in all {n} pairs both sentences are the same text: every cosine would be 1")


# ---------------------------------------------------------------- shaping rows for a loss


def _pair_class(nli: pd.DataFrame, seed: int) -> pd.DataFrame:
    """SoftmaxLoss: the pair and its 3-way label."""
    return nli[["premise", "hypothesis", "label"]]


def _pair_score(nli: pd.DataFrame, seed: int) -> pd.DataFrame:
    """CosineSimilarityLoss: entailment -> 1.0, neutral and contradiction -> 0.0."""
    score = (nli["label"] == ENTAILMENT).astype(float)
    return pd.DataFrame({"sentence1": nli["premise"], "sentence2": nli["hypothesis"], "score": score})


def _entailment_pairs(nli: pd.DataFrame) -> pd.DataFrame:
    pairs = nli[nli["label"] == ENTAILMENT]
    if pairs.empty:
        raise UserError("the training data has no entailment (label 0) rows, which this loss needs")
    return pairs


def _soft_negatives(positives: list[str], seed: int) -> list[str]:
    """The positives shuffled, as the reference recipe does; none left in its own place."""
    negatives = positives[:]
    random.Random(seed).shuffle(negatives)
    for i in range(len(negatives)):
        if negatives[i] == positives[i] and len(negatives) > 1:
            j = (i + 1) % len(negatives)
            negatives[i], negatives[j] = negatives[j], negatives[i]
    return negatives


def _triplets(nli: pd.DataFrame, seed: int) -> pd.DataFrame:
    """(Multiple negatives) ranking losses: entailment pairs only, no label column, plus a soft
    negative drawn by shuffling the entailment hypotheses."""
    pairs = _entailment_pairs(nli)
    positives = pairs["hypothesis"].tolist()
    return pd.DataFrame({"anchor": pairs["premise"].tolist(), "positive": positives, "negative": _soft_negatives(positives, seed)})


def _hard_triplets(nli: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Like `triplets`, but the negative is a contradiction of the same premise where the data has
    one (a hard negative); the soft negative otherwise."""
    shaped = _triplets(nli, seed)
    contradictions = nli[nli["label"] == NLI_LABELS["contradiction"]].drop_duplicates("premise")
    hard = shaped["anchor"].map(contradictions.set_index("premise")["hypothesis"])
    shaped["negative"] = hard.fillna(shaped["negative"])
    return shaped


def _gold_scores(scored: pd.DataFrame, seed: int) -> pd.DataFrame:
    """CosineSimilarityLoss, CoSENT, AnglE on scored pairs: the gold scores, already in [0, 1]."""
    return scored[["sentence1", "sentence2", "score"]]


# (data kind, shape) -> how rows of that kind become the columns the loss trains on.
DERIVATIONS: dict[tuple[str, str], Callable[[pd.DataFrame, int], pd.DataFrame]] = {
    ("nli", "pair_class"): _pair_class,
    ("nli", "pair_score"): _pair_score,
    ("nli", "triplets"): _triplets,
    ("nli", "hard_triplets"): _hard_triplets,
    ("scored", "pair_score"): _gold_scores,
}
KINDS = ("nli", "scored")
SHAPES = tuple(dict.fromkeys(shape for _, shape in DERIVATIONS))
# Shapes that tell entailment from neutral/contradiction, and so need a real label column.
SHAPES_NEEDING_LABELS = frozenset({"pair_class", "pair_score"})
# The columns of each kind that name a pair (the overlap guard compares these).
PAIR_COLUMNS = {"nli": ("premise", "hypothesis"), "scored": ("sentence1", "sentence2")}


def shapes_for(kind: str) -> list[str]:
    return [shape for k, shape in DERIVATIONS if k == kind]


def shape_for_loss(rows: pd.DataFrame, shape: str, seed: int, kind: str = "nli") -> "Dataset":
    """The training Dataset in the column layout the loss expects (`shape:` in conf/loss)."""
    from datasets import Dataset

    if (kind, shape) not in DERIVATIONS:
        raise UserError(f"data shape {shape!r} cannot be made from {kind} data; allowed: {', '.join(shapes_for(kind))}")
    shaped = DERIVATIONS[kind, shape](rows, seed).reset_index(drop=True)
    return Dataset.from_pandas(shaped, preserve_index=False)


# ---------------------------------------------------------------- the sets of one run


@dataclass
class RunData:
    """Everything one run reads: training rows (test pairs left out), eval pairs, test pairs (or None),
    what the overlap guard found, and a fingerprint and description of each set."""

    train: pd.DataFrame
    eval: StsPairs
    test: StsPairs | None
    overlap: splits.Overlap
    fingerprints: dict[str, str]
    sources: dict[str, str]  # set -> where it came from, for messages ("20% held out of <path> (seed 0)")
    frames: dict[str, pd.DataFrame]  # set -> its rows, for dataset records
    records: dict[str, SetRecord]  # set -> where its rows come from, for dataset records
    rows_read: int  # usable training rows in the source, before hold-outs and the guard
    held_out: dict[str, int]  # eval/test -> rows of the training source held out for it
    dropped: dict[str, int]  # why rows of the source were unusable -> how many

    def origin(self) -> str:
        """Where the training rows came from, in counts that add up: "from 5749 scored pairs, 1150 held out as test"."""
        kind = "scored pairs" if "score" in self.train.columns else "NLI rows"
        parts = [f"from {self.rows_read} {kind}"] + [f"{n} held out as {key}" for key, n in self.held_out.items()]
        if self.overlap.train_in_test:
            parts.append(f"{self.overlap.train_in_test} left out as test pairs")
        return ", ".join(parts)

    @property
    def info(self) -> dict[str, int]:
        """Counts about the sets: rows dropped (by why) and the overlap guard's; recorded in sets/ (metric_names)."""
        return {f"dropped_{why}": n for why, n in self.dropped.items()} | self.overlap.metrics()


def load_training(cfg: DictConfig) -> pd.DataFrame:
    """The training rows of the data's kind (`data.kind`: nli or scored)."""
    return load_scored(cfg, "data") if cfg.get("kind", "nli") == "scored" else load_nli(cfg)


def _holdouts(cfg: DictConfig) -> dict[str, float]:
    return {key: float(cfg[key].fraction) for key in ("test", "eval") if cfg.get(key) is not None and cfg[key].get("source") == "holdout"}


@dataclass
class _Split:
    """The sets of one run after hold-outs and the overlap guard, before anything checks that they
    can measure something: what load_run_data and data_version share."""

    frames: dict[str, pd.DataFrame]  # train, eval, test (if any)
    fingerprints: dict[str, str]
    where: dict[str, str]
    held: dict[str, float]
    sides: pd.Series | None
    overlap: splits.Overlap
    rows_read: int
    dropped: dict[str, int]


def data_version(cfg: DictConfig) -> dict[str, str]:
    """The fingerprints of the training and eval data a run of `cfg` would record (RunData.fingerprints),
    without loading a model or checking that the eval pairs can measure anything: what a sweep's study
    is tied to (the Optuna sweeper reads it once at the sweep's start). Test pairs are left out: a
    refreshed test set scores the winner anew but does not change what the trials measured."""
    fingerprints = _split(cfg).fingerprints
    return {key: fingerprints[key] for key in ("train", "eval")}


def load_run_data(cfg: DictConfig) -> RunData:
    """Read training, eval and test data (none with test=none), hold out what the config asks, and
    guard their overlap (splits.py)."""
    split = _split(cfg)
    frames, where, held, sides = split.frames, split.where, split.held, split.sides
    return RunData(
        train=frames["train"],
        eval=sts_pairs(frames["eval"], where["eval"]),
        test=sts_pairs(frames["test"], where["test"]) if "test" in frames else None,
        overlap=split.overlap,
        fingerprints=split.fingerprints,
        sources={"train": where["data"], **{k: where[k] for k in ("eval", "test") if k in frames}},
        frames=frames,
        records={
            key: set_record(cfg.data, f"{cfg.data.name} ({key} holdout)") if key in held else set_record(cfg[group])
            for key, group in (("train", "data"), ("eval", "eval"), ("test", "test"))
            if key in frames
        },
        rows_read=split.rows_read,
        held_out={key: int((sides == key).sum()) for key in held} if sides is not None else {},
        dropped=split.dropped,
    )


def _split(cfg: DictConfig) -> _Split:
    """Read the sets, hold out what the config asks, guard their overlap and fingerprint them."""
    kind = cfg.data.get("kind", "nli")
    rows = load_training(cfg.data)
    where = {"data": rows.attrs["source"]}
    keys = splits.pair_keys(*(rows[c] for c in PAIR_COLUMNS[kind]))
    held = _holdouts(cfg)
    sides = splits.holdout(keys, held, seed=int(cfg.test.seed if "test" in held else cfg.eval.seed)) if held else None
    frames: dict[str, pd.DataFrame] = {}
    for key in ("eval", "test"):
        if key == "test" and cfg.test.get("source") == "none":
            continue
        if key in held:
            part = rows[sides == key].reset_index(drop=True)
            where[key] = f"{held[key]:.0%} held out of {where['data']} (seed {cfg[key].seed})"
            frames[key] = part
        else:
            frames[key] = load_scored(cfg[key], key)
            where[key] = frames[key].attrs["source"]
    rows_read = len(rows)
    dropped = {"no_label": int(rows.attrs["dropped_no_label"]), "empty": int(rows.attrs["dropped_empty"])}
    if sides is not None:
        rows, keys = rows[sides == "train"], keys[sides == "train"]
    held_keys = {key: splits.pair_keys(f["sentence1"], f["sentence2"]) for key, f in frames.items()}
    keep, overlap = splits.guard(keys, held_keys["eval"], held_keys.get("test"), where, allow=bool(cfg.get("allow_test_overlap", False)))
    train = rows[keep].reset_index(drop=True)
    if train.empty:
        raise UserError(f"{where['data']}: no training rows left after holding out eval and test pairs")
    frames = {"train": train} | frames
    fingerprints = {"train": splits.fingerprint(keys[keep].reset_index(drop=True), train["score" if kind == "scored" else "label"].round(6))}
    fingerprints |= {key: splits.fingerprint(held_keys[key], frames[key]["score"].round(6)) for key in held_keys}
    return _Split(frames, fingerprints, where, held, sides, overlap, rows_read, dropped)


def load_test(cfg: DictConfig) -> StsPairs:
    """The test pairs alone (the end of a sweep scores its winner on them): held out of the training
    file with the same split every job used, or read from their own source."""
    if cfg.test.get("source") == "holdout":
        test = load_run_data(cfg).test
        assert test is not None
        return test
    return load_sts(cfg.test, "test")
