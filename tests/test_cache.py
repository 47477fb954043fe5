"""Shared work done once: the baseline score and the shaped training rows, cached by content."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from embedsweep import cache, models

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
