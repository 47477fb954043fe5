"""What a run prints: one line per job start and end and a progress bar by default, every library's
lines with verbose=true; train.log keeps everything either way."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from embedsweep.console import ConsoleFilter, ConsoleFormatter, _shorten, job_count

# What the libraries print when left alone (each seen in a default run before the quiet console).
NOISE = {
    "sentence-transformers evaluation INFO": "EmbeddingSimilarityEvaluator",
    "model card widget bar": "Computing widget examples",
    "trainer log dicts": "'train_runtime'",
    "Hydra launcher lines": "[HYDRA]",
    "library INFO lines": "][INFO]",
    "MLflow store creation": "MLflow database tables",
    "MLflow artifact download bars": "Downloading artifacts",
    "Optuna INFO lines": "[I 20",
}
SMALL = ["model=tiny", "data.limit=200", "trainer.max_steps=3", "trainer.logging_steps=1", "trainer.save_model=false"]


def record(name: str, level: int) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, "message %s", ("text",), None)


def test_a_jobs_line_shows_sampled_floats_as_the_verdict_does() -> None:
    assert _shorten("trainer.warmup_ratio=0.04679835610086079") == "trainer.warmup_ratio=0.0468"
    assert [_shorten(o) for o in ("batch=32", "trainer.lr=5e-05", "loss=mnr", "trial=3")] == ["batch=32", "trainer.lr=5e-05", "loss=mnr", "trial=3"]


def test_quiet_console_keeps_our_lines_and_everyones_warnings() -> None:
    quiet, verbose = ConsoleFilter(verbose=False), ConsoleFilter(verbose=True)
    assert quiet.filter(record("embedsweep", logging.INFO))
    assert quiet.filter(record("hydra_plugins.embedsweep_optuna_sweeper._impl", logging.INFO))
    assert not quiet.filter(record("sentence_transformers.evaluation", logging.INFO))
    assert not quiet.filter(record("hydra._internal.core_plugins.basic_launcher", logging.INFO))
    assert quiet.filter(record("sentence_transformers.evaluation", logging.WARNING))
    assert quiet.filter(record("transformers.trainer", logging.ERROR))
    assert verbose.filter(record("sentence_transformers.evaluation", logging.INFO))
    for_the_file = record("embedsweep.console", logging.ERROR)
    for_the_file.console = False  # `extra={"console": False}`: a single run's failure line, which app.main says
    assert not quiet.filter(for_the_file) and not verbose.filter(for_the_file)

    plain = ConsoleFormatter(verbose=False)
    assert plain.format(record("embedsweep", logging.INFO)) == "message text"
    assert plain.format(record("embedsweep.console", logging.ERROR)) == "ERROR: message text"
    assert plain.format(record("transformers.trainer", logging.WARNING)) == "WARNING transformers.trainer: message text"
    assert "][embedsweep][INFO] - message text" in ConsoleFormatter(verbose=True).format(record("embedsweep", logging.INFO))


def test_job_count_is_the_basic_sweepers_grid() -> None:
    def config(task: list[str], params: dict | None = None, target: str = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"):
        return OmegaConf.create({"hydra": {"sweeper": {"_target_": target, "params": params}, "overrides": {"task": task}}})

    assert job_count(config(["loss=mnr,cosine", "batch=32,128", "model=tiny"])) == 4
    assert job_count(config(["loss=mnr,cosine"], params={"batch": "16,32,64"})) == 6
    assert job_count(config(["model=tiny"])) == 1
    assert job_count(config(["batch=16"], target="hydra_plugins.embedsweep_optuna_sweeper.optuna_sweeper.OptunaSweeper")) is None


def test_a_sweep_prints_a_line_per_job_start_and_end_and_a_bar(train_cmd, tmp_path: Path) -> None:
    proc = train_cmd("-m", "loss=mnr,cosine", *SMALL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.splitlines()
    assert out[0].startswith("[job 1/2] loss=mnr model=tiny data.limit=200 trainer.max_steps=3")
    assert sum(line.startswith("[job 2/2] loss=cosine model=tiny") for line in out) == 1
    assert sum(line.startswith("  done in ") and "pearson_cosine" in line for line in out) == 2
    # The counts add up: rows read -> training rows -> steps, at this batch size.
    rows = [int(line.split()[0]) for line in out if line.startswith("  ") and " training rows (" in line]
    done = [line for line in out if line.startswith("  done in ")]
    assert len(rows) == 2 and all(f", 3 steps (trainer.max_steps=3; an epoch of {n} rows at batch=32 is {-(-n // 32)}): " in line for n, line in zip(rows, done)), out
    verdict = next(i for i, line in enumerate(out) if line.startswith("sweep verdict"))
    assert len(out[:verdict]) == 6, out  # per job: start, data and baseline, done
    assert out[-1].startswith("runs in MLflow: http://") and len(out) <= 6 + 12, out  # then the verdict, and no more
    assert proc.stderr.count("  train: 100%") >= 2  # one progress bar per job
    for what, text in NOISE.items():
        assert text not in proc.stdout + proc.stderr, what
    # Nothing is lost: each job's train.log still has the libraries' lines.
    logs = sorted((tmp_path / "outputs" / "multiruns").glob("*/*/*/train.log"))
    assert len(logs) == 2 and all("EmbeddingSimilarityEvaluator" in log.read_text() for log in logs)


def test_verbose_brings_the_full_logs_back(train_cmd) -> None:
    proc = train_cmd("verbose=true", "trainer.eval_steps=2", *SMALL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shown = proc.stdout + proc.stderr
    for text in ("EmbeddingSimilarityEvaluator", "Computing widget examples", "'train_runtime'", "'loss'", "][INFO]"):
        assert text in shown, text


# ---------------------------------------------------------------- ours: the help page, a quiet console (issue 21)


def _help_sections(text: str) -> dict[str, list[str]]:
    """The help page's sections: a line ending with ':' at the margin opens one."""
    sections: dict[str, list[str]] = {"": []}
    current = ""
    for line in text.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            current = line[:-1]
            sections[current] = []
        elif line.strip():
            sections[current].append(line)
    return sections


def test_help_is_ours_and_every_command_in_it_composes(train_cmd, compose) -> None:
    proc = train_cmd("--help")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert text.startswith("embedsweep: train and tune sentence-embedding models")
    for hydras in ("powered by Hydra", "Powered by Hydra", "== Config ==", "parent_run_id", "swept:", "trial:", "_target_"):
        assert hydras not in text, hydras
    sections = _help_sections(text)
    described = " ".join(line.split("  ")[1] for line in sections["Config groups (group=option)"] if line.startswith("  "))
    options = dict(line.split(": ", 1) for line in sections["Options of each group"])
    assert {"data", "eval", "test", "loss", "model", "trainer", "experiment", "hparams_search", "launcher"} <= set(options)
    for group in options:  # Hydra lists them from conf/: a new group without its line here fails
        assert group in described.replace(",", " ").split(), f"the help page does not describe the group {group}"
    assert "mnr" in options["loss"].split(", ") and "tiny" in options["model"].split(", ")

    commands = [line.split("  ")[1] if line.startswith("  ") else line for line in sections["Main commands"]]
    runs = [c.split("  ")[0].split()[2:] for c in commands if c.startswith("python train.py")]
    assert len(runs) == 5 and any("-m" in r for r in runs)
    assert {"make ui", "make report"} <= {c.split("  ")[0] for c in commands}
    for args in runs:  # each composes, a sweep's first job for a sweep
        compose(*(a.split(",")[0] for a in args if a != "-m"))


OPTUNA = ["-m", "hydra/sweeper=optuna", "batch=choice(8,16)", "hydra.sweeper.n_trials=1", *SMALL]


@pytest.mark.slow  # a real sweep in a subprocess: the fast suite stays as fast as before this round
def test_an_optuna_sweep_prints_no_optuna_lines_in_the_quiet_console(train_cmd) -> None:
    proc = train_cmd(*OPTUNA)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for what, text in NOISE.items():
        assert text not in proc.stdout + proc.stderr, what
    assert any(line.startswith("study '") for line in proc.stdout.splitlines())  # ours says what Optuna's did


@pytest.mark.slow
def test_verbose_brings_optunas_and_mlflows_lines_back(train_cmd) -> None:
    proc = train_cmd(*OPTUNA, "verbose=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    shown = proc.stdout + proc.stderr
    assert "[I 20" in shown and "A new study created" in shown
