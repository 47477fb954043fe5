"""The conclusion of a sweep, whatever the tracker: rank the jobs, say which is best and by how much
(verdict), score the winner on held-out test pairs and register it (promote), tables and plots (report).

May import: `embedsweep.run` (to score a model), `embedsweep.tracking` (its seam only: runs read back,
results written, models registered). Never MLflow or Optuna directly.
"""
