"""Entry point: `python train.py [overrides]`; see README.md. The code lives in src/embedsweep."""

from embedsweep.app import main

if __name__ == "__main__":
    main()
