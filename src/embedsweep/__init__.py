"""embedsweep: Hydra-configured sweeps for training sentence-embedding models."""

__version__ = "0.1.0"
