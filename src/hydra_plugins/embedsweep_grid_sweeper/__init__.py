"""embedsweep's grid sweeper for Hydra (`hydra/sweeper=grid`, the default): Hydra's basic sweeper
inside a tracked sweep. Hydra finds it by scanning the `hydra_plugins` namespace package."""
