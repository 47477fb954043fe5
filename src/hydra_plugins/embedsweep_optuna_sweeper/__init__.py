"""embedsweep's Optuna sweeper for Hydra: `python train.py -m hydra/sweeper=optuna ...`.

Hydra finds it by scanning the `hydra_plugins` namespace package; see optuna_sweeper.py for why it exists.
"""
