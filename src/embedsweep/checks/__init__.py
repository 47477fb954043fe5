"""Checks of the input before any work: the composed config, the machine and its stores, the files.

Lives here: config (the composed config: values, shapes, held-out settings), preflight (a Hydra
callback that checks a run or a whole sweep at its start), stores (where runs, studies and outputs
live; a full disk named by what lies on it), claim (one sweep per output folder), training_checks
(what a built trainer would do wrong), hub (offline, clear errors for Hugging Face Hub ids).
May import: hydra, omegaconf, the standard library, `embedsweep.errors`, `embedsweep.swept` (what a sweep
varies), and the Optuna sweeper's public `config.check_options` (its options, checked by the preflight).
No tracking or training libraries.
"""
