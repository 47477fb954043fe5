"""Shared work done once: the baseline score and the shaped training rows, cached by content."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from embedsweep.run import cache, models

PAIRS = (["a cat sits", "a dog runs"], ["a cat is sitting", "a man sings"], [0.9, 0.1])
SETTINGS = {"batch_size": 32, "main_similarity": "cosine"}


@pytest.fixture(scope="module")
def tiny(request):  # noqa: ANN001, ANN201
    from hydra import compose, initialize_config_dir

    from conftest import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["model=tiny"])
    return lambda seed=42: models.build_model(cfg.model, seed=seed)


def test_baseline_key_follows_weights_pairs_settings_and_device(tiny) -> None:  # noqa: ANN001
    model = tiny()
    key = cache.baseline_key(model, *PAIRS, SETTINGS, "cpu")
    assert key == cache.baseline_key(tiny(), *PAIRS, SETTINGS, "cpu")  # same seed, same weights
    assert key != cache.baseline_key(tiny(seed=7), *PAIRS, SETTINGS, "cpu")
    assert key != cache.baseline_key(model, PAIRS[0], PAIRS[1], [0.9, 0.2], SETTINGS, "cpu")
    assert key != cache.baseline_key(model, ["a cat sat", "a dog runs"], *PAIRS[1:], SETTINGS, "cpu")
    assert key != cache.baseline_key(model, *PAIRS, SETTINGS | {"batch_size": 16}, "cpu")
    assert key != cache.baseline_key(model, *PAIRS, SETTINGS, "NVIDIA H200")
    with torch.no_grad():
        next(model.parameters())[0, 0] += 1e-3
    assert key != cache.baseline_key(model, *PAIRS, SETTINGS, "cpu")
    model = tiny()
    model.max_seq_length = 16  # the same weights, but it truncates differently
    assert key != cache.baseline_key(model, *PAIRS, SETTINGS, "cpu")


def test_cached_json_computes_once_across_calls(tmp_path: Path) -> None:
    calls = []

    def compute() -> dict[str, float]:
        calls.append(1)
        return {"pearson_cosine": 0.5}

    assert cache.cached_json(str(tmp_path), "baseline", lambda: "k1", compute) == ({"pearson_cosine": 0.5}, False)
    assert cache.cached_json(str(tmp_path), "baseline", lambda: "k1", compute) == ({"pearson_cosine": 0.5}, True)
    assert len(calls) == 1
    cache.cached_json(str(tmp_path), "baseline", lambda: "k2", compute)
    cache.cached_json(None, "baseline", lambda: "k1", compute)  # caching off
    assert len(calls) == 3
    assert sorted(p.name for p in (tmp_path / "baseline").iterdir()) == ["k1.json", "k2.json"]  # no temporary left


def test_an_unreadable_entry_is_recomputed(tmp_path: Path) -> None:
    (tmp_path / "baseline").mkdir()
    (tmp_path / "baseline" / "k.json").write_text("{not json")
    assert cache.cached_json(str(tmp_path), "baseline", lambda: "k", lambda: {"x": 1.0}) == ({"x": 1.0}, False)
    assert cache.cached_json(str(tmp_path), "baseline", lambda: "k", lambda: {"x": 2.0}) == ({"x": 1.0}, True)


def test_shaped_data_key_follows_the_rows_their_order_shape_and_seed() -> None:
    import pandas as pd

    rows = pd.DataFrame({"premise": ["a", "c"], "hypothesis": ["b", "d"], "label": [0, 0]})
    key = cache.shaped_data_key(rows, "nli", "triplets", 42)
    assert key == cache.shaped_data_key(rows.copy(), "nli", "triplets", 42)
    assert key != cache.shaped_data_key(rows, "nli", "hard_triplets", 42)
    assert key != cache.shaped_data_key(rows, "nli", "triplets", 1)
    assert key != cache.shaped_data_key(rows.assign(hypothesis=["b", "e"]), "nli", "triplets", 42)
    assert key != cache.shaped_data_key(rows.iloc[::-1].reset_index(drop=True), "nli", "triplets", 42)  # order shapes negatives
    assert key != cache.shaped_data_key(rows.assign(hypothesis=["B", "d"]), "nli", "triplets", 42)  # exact text, not normalised


def test_cached_dataset_round_trip(tmp_path: Path) -> None:
    from datasets import Dataset

    built = []

    def build() -> Dataset:
        built.append(1)
        return Dataset.from_dict({"anchor": ["a", "b"], "positive": ["c", "d"]})

    first = cache.cached_dataset(str(tmp_path), lambda: "key", build)
    second = cache.cached_dataset(str(tmp_path), lambda: "key", build)
    assert len(built) == 1 and (first[1], second[1]) == (False, True)
    assert second[0].to_dict() == {"anchor": ["a", "b"], "positive": ["c", "d"]}


# ---------------------------------------------------------------- entries that prove themselves whole


def _dataset(n: int = 500):
    from datasets import Dataset

    return Dataset.from_dict({"anchor": [f"a{i}" for i in range(n)], "positive": [f"p{i}" for i in range(n)]})


def _damage_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "embedsweep.run.cache" and r.levelname == "WARNING"]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda f: f.write_text(f.read_text()[:10]), "not JSON: "),  # cut short
        (lambda f: f.write_text(f.read_text().replace("0.5", "0.6")), "checksum mismatch"),  # a changed value
        (lambda f: f.write_text('{"pearson_cosine": 0.5, "x": "y"}'), "no checksum"),
        (lambda f: f.write_bytes(b"\xff\xfe\x00"), "not text"),
    ],
    ids=["truncated", "altered", "foreign", "binary"],
)
def test_a_damaged_json_entry_is_one_warning_removed_and_recomputed(tmp_path: Path, caplog: pytest.LogCaptureFixture, damage, reason: str) -> None:  # noqa: ANN001
    cache.cached_json(str(tmp_path), "baseline", lambda: "k", lambda: {"pearson_cosine": 0.5})
    entry = tmp_path / "baseline" / "k.json"
    damage(entry)
    caplog.set_level("DEBUG", logger="embedsweep.run.cache")
    assert cache.cached_json(str(tmp_path), "baseline", lambda: "k", lambda: {"pearson_cosine": 0.25}) == ({"pearson_cosine": 0.25}, False)
    (warning,) = _damage_warnings(caplog)
    assert warning.startswith(f"cache entry {entry} is damaged ({reason}") and warning.endswith("): removed, recomputing it")
    assert "\n" not in warning
    assert cache.cached_json(str(tmp_path), "baseline", lambda: "k", lambda: {"pearson_cosine": 0.0}) == ({"pearson_cosine": 0.25}, True)
    assert sorted(p.name for p in (tmp_path / "baseline").iterdir()) == ["k.json"]  # nothing left beside it


def test_an_entry_of_the_earlier_format_is_replaced_without_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "baseline").mkdir()
    (tmp_path / "baseline" / "k.json").write_text('{"pearson_cosine": 0.5}')
    assert cache.cached_json(str(tmp_path), "baseline", lambda: "k", lambda: {"pearson_cosine": 0.5}) == ({"pearson_cosine": 0.5}, False)
    assert _damage_warnings(caplog) == []
    assert cache.cached_json(str(tmp_path), "baseline", lambda: "k", lambda: {"x": 1.0})[1] is True


def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


DATASET_DAMAGE = {  # what happens to a dataset entry -> the reason the warning gives
    "arrow cut short": (lambda e: _truncate(next((e / "rows").glob("*.arrow"))), "rows/data-00000-of-00001.arrow differs from manifest.json"),
    "arrow emptied": (lambda e: next((e / "rows").glob("*.arrow")).write_bytes(b""), "rows/data-00000-of-00001.arrow differs from manifest.json"),
    "state.json cut short": (lambda e: _truncate(e / "rows" / "state.json"), "rows/state.json differs from manifest.json"),
    "a file missing": (lambda e: (e / "rows" / "dataset_info.json").unlink(), "rows/dataset_info.json differs from manifest.json"),
    "never finished": (lambda e: (e / "manifest.json").unlink(), "no manifest.json: never finished"),
    "manifest cut short": (lambda e: _truncate(e / "manifest.json"), "manifest.json unreadable: "),
}


@pytest.mark.parametrize("damage", list(DATASET_DAMAGE))
def test_a_damaged_dataset_entry_is_one_warning_removed_and_recomputed(tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str) -> None:
    cache.cached_dataset(str(tmp_path), lambda: "key", _dataset)
    entry = tmp_path / "data" / "key"
    do, reason = DATASET_DAMAGE[damage]
    do(entry)
    built = []

    def build():  # noqa: ANN202
        built.append(1)
        return _dataset()

    dataset, cached = cache.cached_dataset(str(tmp_path), lambda: "key", build)
    assert (cached, len(built), len(dataset), dataset[499]) == (False, 1, 500, {"anchor": "a499", "positive": "p499"})
    (warning,) = _damage_warnings(caplog)
    assert warning.startswith(f"cache entry {entry} is damaged ({reason}") and warning.endswith("): removed, recomputing it")
    cache._check_dataset_entry(entry)  # whole again
    assert cache.cached_dataset(str(tmp_path), lambda: "key", build)[1] is True and len(built) == 1
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["key"]


def test_a_dataset_entry_of_the_earlier_format_is_replaced_without_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache.cached_dataset(str(tmp_path), lambda: "key", _dataset)
    entry = tmp_path / "data" / "key"
    (entry / "manifest.json").unlink()
    (entry / "info.json").write_text('{"rows": 500}')  # the earlier completion marker
    assert cache.cached_dataset(str(tmp_path), lambda: "key", _dataset)[1] is False
    assert _damage_warnings(caplog) == []
    cache._check_dataset_entry(entry)


FILL = """
import sys, time
from pathlib import Path
from datasets import Dataset
from embedsweep.run import cache
def build():
    time.sleep(1.0)  # both processes are inside build() at once
    return Dataset.from_dict({"anchor": [f"a{i}" for i in range(3000)], "positive": [f"p{i}" for i in range(3000)]})
dataset, cached = cache.cached_dataset(sys.argv[1], lambda: "key", build)
value, _ = cache.cached_json(sys.argv[1], "baseline", lambda: "k", lambda: (time.sleep(1.0), {"pearson_cosine": 0.5})[1])
assert len(dataset) == 3000 and dataset[2999]["anchor"] == "a2999" and value == {"pearson_cosine": 0.5}
print("ok", cached)
"""


@pytest.mark.parametrize("start", ["empty", "damaged"])
def test_two_processes_filling_the_same_entry_both_work(tmp_path: Path, start: str) -> None:
    import subprocess
    import sys

    if start == "damaged":
        cache.cached_dataset(str(tmp_path), lambda: "key", _dataset)
        _truncate(next((tmp_path / "data" / "key" / "rows").glob("*.arrow")))
        (tmp_path / "baseline").mkdir()
        (tmp_path / "baseline" / "k.json").write_text('{"value": {"pearson')
    procs = [subprocess.Popen([sys.executable, "-c", FILL, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, outs):
        assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]
        assert out.strip() == "ok False"
    cache._check_dataset_entry(tmp_path / "data" / "key")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["key"] and sorted(p.name for p in (tmp_path / "baseline").iterdir()) == ["k.json"]
    assert cache.cached_dataset(str(tmp_path), lambda: "key", _dataset)[1] is True


@pytest.mark.slow
def test_a_run_over_a_damaged_cache_warns_once_per_entry_and_trains(train_cmd, mlflow_runs, tmp_path: Path) -> None:
    """A cache cut short (state.json of the shaped data, the baseline score) used to end every later run in
    a JSONDecodeError traceback until the folder was deleted by hand."""
    args = ["model=tiny", "trainer.max_steps=2", "trainer.warmup_steps=0", "test=none"]
    first = train_cmd(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    root = tmp_path / "outputs" / "cache"
    (data_entry,) = (root / "data").iterdir()
    (baseline_entry,) = (root / "baseline").iterdir()
    _truncate(data_entry / "rows" / "state.json")
    _truncate(baseline_entry)
    second = train_cmd(*args)
    assert second.returncode == 0 and "Traceback" not in second.stderr, second.stderr[-3000:]
    warnings = [line for line in (second.stdout + second.stderr).splitlines() if "is damaged" in line]  # the console is stdout
    assert len(warnings) == 2, second.stdout[-3000:]
    assert any(f"cache entry {data_entry} is damaged (rows/state.json differs from manifest.json): removed, recomputing it" in w for w in warnings)
    assert any(f"cache entry {baseline_entry} is damaged (not JSON: " in w for w in warnings)
    third = train_cmd(*args)
    assert third.returncode == 0 and "is damaged" not in third.stdout + third.stderr
    runs = mlflow_runs()
    assert [(r.data.tags["data_cached"], r.data.tags["baseline_cached"]) for r in runs] == [("False", "False"), ("False", "False"), ("True", "True")]
    assert {r.info.status for r in runs} == {"FINISHED"}
