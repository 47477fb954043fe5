"""STS evaluation: Pearson and Spearman correlation of cosine similarity with gold scores."""

from __future__ import annotations

from typing import TYPE_CHECKING

from embedsweep.data import StsPairs

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

EVALUATOR_NAME = "sts"
METRICS = ("pearson_cosine", "spearman_cosine")


def sts_evaluator(pairs: StsPairs, batch_size: int) -> "EmbeddingSimilarityEvaluator":
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    return EmbeddingSimilarityEvaluator(
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


def score(model: "SentenceTransformer", evaluator: "EmbeddingSimilarityEvaluator") -> dict[str, float]:
    return metrics_from(evaluator(model), prefix="")


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
