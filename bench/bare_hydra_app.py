"""The yardstick for bench/startup.py: a Hydra app with embedsweep's config tree and a task that does nothing."""

from pathlib import Path

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parents[1] / "conf"), config_name="train")
def main(cfg: DictConfig) -> None:
    return None


if __name__ == "__main__":
    main()
