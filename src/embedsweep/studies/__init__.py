"""Optuna, for the sweeper plugin and the trials it runs: the study's storage, its pruner, and a
trial's pruning callback inside a job. The only place besides `hydra_plugins.embedsweep_optuna_sweeper`
that imports Optuna.
"""
