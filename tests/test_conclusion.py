"""The conclusion of a sweep apart from its recording: tracker-neutral code (conclude/) over the seam
(tracking/), a registry whose names say what they hold, drift of the champion, and any run's model."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from omegaconf import OmegaConf

from embedsweep.conclude import drift, promote
from embedsweep.conclude.verdict import JobResult, rank
from embedsweep.run import noise
from embedsweep.tracking import ModelVersion

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- one place per library


def _files_importing(pattern: str) -> set[str]:
    """The project's code (tests aside): the package, the benchmarks, the deploy scripts."""
    found = subprocess.run(["git", "grep", "-lE", pattern, "--", "src", "bench", "deploy", "train.py"], cwd=ROOT, capture_output=True, text=True)
    return set(found.stdout.split())


def test_mlflow_is_imported_in_the_tracking_subpackage_only() -> None:
    files = _files_importing(r"^\s*(import mlflow|from mlflow)")
    assert files and all(f.startswith("src/embedsweep/tracking/") for f in files), sorted(files)


def test_optuna_is_imported_in_the_sweeper_and_its_study_helpers_only() -> None:
    files = _files_importing(r"^\s*(import optuna|from optuna)")
    allowed = ("src/hydra_plugins/embedsweep_optuna_sweeper/", "src/embedsweep/studies/")
    assert files and all(f.startswith(allowed) for f in files), sorted(files)


def test_nothing_outside_the_sweeper_plugin_imports_its_private_modules() -> None:
    files = _files_importing(r"embedsweep_optuna_sweeper\._")
    assert all(f.startswith("src/hydra_plugins/embedsweep_optuna_sweeper/") for f in files), sorted(files)


# ---------------------------------------------------------------- the registry


class FakeRegistry:
    """The seam's Registry in memory: what promote() asks of it, recorded."""

    def __init__(self, champion: ModelVersion | None = None) -> None:
        self.champion = champion
        self.registered: list[tuple[str, dict]] = []

    def version(self, name: str, alias: str) -> ModelVersion | None:
        return self.champion if self.champion is not None and self.champion.name == name else None

    def register(self, model, run_id: str, name: str, tags):  # noqa: ANN001, ANN201
        self.registered.append((name, dict(tags)))
        return ModelVersion(name, str(len(self.registered)), dict(tags))


def _config(model: dict, **promote_options: object):  # noqa: ANN202
    return OmegaConf.create({
        "promote": {"model_name": None, "alias": "champion", **promote_options}, "test": {"source": "packaged"},
        "trainer": {"eval_batch_size": 8, "seed": 1}, "model": model, "data": {"kind": "nli"},
    })  # fmt: skip


TINY = {"name": "tiny", "source": "random_bert", "num_hidden_layers": 2, "hidden_size": 32}
MINILM = {"name": "minilm", "source": "packaged", "hub_id": "sentence-transformers/all-MiniLM-L6-v2"}


def _best_with_a_model(tmp_path: Path) -> list[JobResult]:
    (tmp_path / "job" / "model").mkdir(parents=True)
    (tmp_path / "job" / "model" / "modules.json").write_text("[]")
    return rank([JobResult("loss=mnr", {}, "FINISHED", {"pearson_cosine": 0.8}, 1.0, "r1", output_dir=str(tmp_path / "job"))], "pearson_cosine")


def test_registry_names_say_what_they_hold() -> None:
    assert promote.registry_name(_config(MINILM)) == "minilm-nli"
    scored = _config(MINILM)
    scored.data.kind = "scored"
    assert promote.registry_name(scored) == "minilm-similarity"
    assert promote.registry_name(_config(MINILM, model_name="search-prod")) == "search-prod"  # an explicit name wins


def test_a_random_init_model_is_never_registered_unless_asked(tmp_path: Path) -> None:
    registry = FakeRegistry()
    parent = SimpleNamespace(run_id="parent", log_results=lambda *a, **k: pytest.fail("nothing is recorded"))
    result = promote.promote(registry, parent, _best_with_a_model(tmp_path), _config(TINY), "pearson_cosine")
    assert result.notes == [
        "not promoted: model=tiny is a random-init tiny (2 layers, 32 wide), a smoke test, not a model to serve "
        "(promote.register_random_init=true registers it anyway)"
    ]
    assert registry.registered == [] and result.version is None


def test_a_champion_is_only_challenged_by_a_model_of_the_same_base(tmp_path: Path) -> None:
    """An explicit name shared by two base models: the other base's champion is left alone, nothing registered."""
    other = ModelVersion("shared", "3", {"base_model": "sentence-transformers/all-mpnet-base-v2"})
    registry = FakeRegistry(champion=other)
    parent = SimpleNamespace(run_id="parent", log_results=lambda *a, **k: pytest.fail("nothing is recorded"))
    result = promote.promote(registry, parent, _best_with_a_model(tmp_path), _config(MINILM, model_name="shared"), "pearson_cosine")
    assert result.notes == [
        "not promoted: @champion of shared is version 3, trained from sentence-transformers/all-mpnet-base-v2; this sweep trained "
        "sentence-transformers/all-MiniLM-L6-v2: a champion is only challenged by a model of the same base (set another promote.model_name)"
    ]
    assert registry.registered == []


# ---------------------------------------------------------------- drift


def _pairs(similarities: np.ndarray, gold: np.ndarray, fingerprint: str = "today") -> noise.ScoredPairs:
    return noise.ScoredPairs(fingerprint, tuple(map(float, similarities)), tuple(map(float, gold)))


def _metrics(pairs: noise.ScoredPairs) -> dict[str, float]:
    found = noise.metrics(noise.intervals(np.array(pairs.similarities), np.array(pairs.gold)))
    return found | {"pearson_cosine": noise.score("pearson_cosine", pairs.similarities, pairs.gold)}


def test_drift_on_the_same_pairs_is_judged_pair_by_pair() -> None:
    rng = np.random.default_rng(0)
    gold = rng.random(600)
    then = gold + 0.3 * rng.standard_normal(600)
    kept = _pairs(then, gold)
    same = drift.compare("minilm-nli", "3", "pearson_cosine", _metrics(kept), kept, kept, {"test_pearson_cosine": "0.5"})
    assert same.same_pairs and not same.beyond_noise and same.difference == (0.0, 0.0)
    assert same.line().startswith("champion minilm-nli v3 on today's test pairs: pearson_cosine ")
    assert "+0.0000; paired 95% interval [+0.0000, +0.0000] on the same pairs): within noise" in same.line()

    worse = _pairs(then + 0.8 * rng.standard_normal(600), gold)  # the same pairs, scored worse (another environment)
    found = drift.compare("minilm-nli", "3", "pearson_cosine", _metrics(worse), worse, kept, {})
    assert found.same_pairs and found.beyond_noise and found.difference[1] < 0
    assert found.line().endswith("on the same pairs): beyond noise")


def test_drift_on_other_pairs_is_judged_by_the_two_intervals() -> None:
    rng = np.random.default_rng(1)
    gold = rng.random(600)
    kept = _pairs(gold + 0.2 * rng.standard_normal(600), gold, fingerprint="then")
    then = _metrics(kept)
    tags = {f"test_pearson_cosine{k}": f"{then['pearson_cosine' + k]:.6f}" for k in ("", "_ci_low", "_ci_high")}
    harder = _pairs(gold + 0.9 * rng.standard_normal(600), gold)
    found = drift.compare("minilm-nli", "3", "pearson_cosine", _metrics(harder), harder, kept, tags)
    assert not found.same_pairs and found.beyond_noise and found.difference is None
    assert f"was {then['pearson_cosine']:.4f} at promotion" in found.line()
    assert "then, on other pairs: apart): beyond noise" in found.line()

    alike = _pairs(gold + 0.2 * rng.standard_normal(600), gold)
    close = drift.compare("minilm-nli", "3", "pearson_cosine", _metrics(alike), alike, None, tags)
    assert not close.beyond_noise and "on other pairs: overlapping): within noise" in close.line()


# ---------------------------------------------------------------- any run's model


@pytest.mark.slow  # a real sweep in a subprocess: the fast suite stays as fast as before this round
def test_log_models_puts_each_jobs_model_on_its_run(train_cmd, mlflow_runs, tmp_path: Path) -> None:
    """`tracking.log_models=true`: the run's own model, loadable from runs:/<id>/model as the docs show."""
    proc = train_cmd("model=tiny", "trainer.max_steps=2", "trainer.warmup_steps=0", "test=none", "tracking.log_models=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = mlflow_runs()
    import mlflow
    import mlflow.sentence_transformers

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    model = mlflow.sentence_transformers.load_model(f"runs:/{run.info.run_id}/model")
    assert model.get_embedding_dimension() == 32
