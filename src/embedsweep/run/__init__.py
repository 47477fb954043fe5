"""One run: read the data, build the model and loss, train, evaluate, with the statistics of its scores.

Lives here: data (reading and shaping rows), splits (held-out pairs, overlap guard), models, losses,
training (the trainer), evaluate and noise (STS scores and their intervals), callbacks, efficiency,
cache, distributed. May import: torch, sentence-transformers, transformers, datasets, pandas, and
`embedsweep.checks`, `embedsweep.errors`, `embedsweep.redaction`. Never MLflow or Optuna: a run records
through the tracker seam (`embedsweep.tracking`) that the task function (`embedsweep.app`) hands it.
"""
