"""STS evaluation: Pearson and Spearman correlation of cosine similarity with gold scores, and how
much of that is noise (95% bootstrap intervals over the pairs, noise.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from embedsweep.run import noise
from embedsweep.run.metric_names import SCORES
from embedsweep.run.cache import digest
from embedsweep.run.data import StsPairs

if TYPE_CHECKING:
    import numpy as np
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

EVALUATOR_NAME = "sts"
METRICS = SCORES  # as the evaluator names them; recorded as answer/pearson_cosine... (metric_names)


def _evaluator_class() -> type:
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator
    from sentence_transformers.util import pairwise_cos_sim

    class StsEvaluator(EmbeddingSimilarityEvaluator):
        """sentence-transformers' STS evaluator that keeps the cosine similarities of its last call,
        so that a bootstrap interval resamples them instead of encoding the pairs again."""

        similarities: "np.ndarray | None" = None

        def __call__(self, model: "SentenceTransformer", *args: Any, **kwargs: Any) -> dict[str, float]:
            self._embedded: list[Any] = []
            metrics = super().__call__(model, *args, **kwargs)
            first, second = self._embedded  # sentences1, then sentences2 (float precision)
            self.similarities = pairwise_cos_sim(first, second).detach().cpu().numpy()
            return metrics

        def embed_inputs(self, model: "SentenceTransformer", sentences: Any, **kwargs: Any) -> Any:
            embeddings = super().embed_inputs(model, sentences, **kwargs)
            self._embedded.append(embeddings)
            return embeddings

    return StsEvaluator


def sts_evaluator(pairs: StsPairs, batch_size: int) -> "EmbeddingSimilarityEvaluator":
    return _evaluator_class()(
        pairs.sentence1,
        pairs.sentence2,
        pairs.scores,
        batch_size=batch_size,
        main_similarity="cosine",
        similarity_fn_names=["cosine"],
        name=EVALUATOR_NAME,
        write_csv=False,
    )


def metrics_from(raw: dict[str, float], prefix: str) -> dict[str, float]:
    """Our metric names from the evaluator's keys, e.g. `eval_sts_pearson_cosine` -> `pearson_cosine`."""
    return {m: float(raw[f"{prefix}{EVALUATOR_NAME}_{m}"]) for m in METRICS if f"{prefix}{EVALUATOR_NAME}_{m}" in raw}


@dataclass(frozen=True)
class Scored:
    metrics: dict[str, float]  # pearson_cosine, spearman_cosine and their _ci_low / _ci_high
    similarities: "np.ndarray"  # one cosine similarity per pair, in the pairs' order


def score_with_similarities(model: "SentenceTransformer", evaluator: "EmbeddingSimilarityEvaluator") -> Scored:
    found = metrics_from(evaluator(model), prefix="")
    found |= noise.metrics(noise.intervals(evaluator.similarities, evaluator.scores))
    return Scored(found, evaluator.similarities)


def score(model: "SentenceTransformer", evaluator: "EmbeddingSimilarityEvaluator") -> dict[str, float]:
    """The correlations and their 95% bootstrap intervals."""
    return score_with_similarities(model, evaluator).metrics


def intervals(evaluator: "EmbeddingSimilarityEvaluator") -> dict[str, float]:
    """The 95% bootstrap intervals of the evaluator's last call, from the similarities it kept."""
    return noise.metrics(noise.intervals(evaluator.similarities, evaluator.scores))


def scored_pairs(evaluator: "EmbeddingSimilarityEvaluator") -> noise.ScoredPairs:
    """The similarities of the evaluator's last call, with the pairs they score (the evaluator holds
    them), kept for paired comparisons (noise.py)."""
    gold = [float(s) for s in evaluator.scores]
    fingerprint = digest(list(evaluator.sentences1), list(evaluator.sentences2), gold)
    return noise.ScoredPairs(fingerprint, tuple(map(float, evaluator.similarities)), tuple(gold))


def settings(evaluator: "EmbeddingSimilarityEvaluator") -> dict[str, object]:
    """What, besides the model and the pairs, decides the evaluator's scores (a cache key part)."""
    return {
        "class": type(evaluator).__qualname__,
        "batch_size": evaluator.batch_size,
        "main_similarity": str(evaluator.main_similarity),
        "similarity_fn_names": list(evaluator.similarity_fn_names),
        "truncate_dim": getattr(evaluator, "truncate_dim", None),
        "prompt": getattr(evaluator, "prompt", None),
    }
