"""The sweep's answer, end to end: the verdict at the end of a real multirun, the report command, a
real `mlflow server` over that store (REST API), and the UI link opened in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import OFFLINE_ENV, ROOT, require

QUICK = ["model=tiny", "trainer.max_steps=4", "trainer.eval_steps=2", "trainer.lr=1e-3", "trainer.save_model=false"]
PNG = b"\x89PNG\r\n\x1a\n"


def _run(args: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = os.environ | OFFLINE_ENV
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A real 2 x 2 multirun (model=tiny) into a fresh store."""
    cwd = tmp_path_factory.mktemp("grid")
    proc = _run([str(ROOT / "train.py"), "-m", "loss=mnr,cosine", "batch=16,32", *QUICK], cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd, proc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(grid_sweep: tuple[Path, subprocess.CompletedProcess[str]]) -> Iterator[str]:
    """`mlflow server` on a free loopback port over the sweep's store; stopped by its process id."""
    cwd, _ = grid_sweep
    port = _free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{cwd}/outputs/mlflow.db", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, "mlflow server exited at start"
                time.sleep(1)
        else:
            raise AssertionError("mlflow server did not answer within 240 s")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.poll() is not None  # stopped


def _rest(url: str, endpoint: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{url}/api/2.0/mlflow/{endpoint}", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _experiment_id(url: str) -> str:
    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=embedsweep", timeout=30) as resp:
        return json.loads(resp.read())["experiment"]["experiment_id"]


def _search(url: str, filter_string: str) -> list[dict]:
    return _rest(url, "runs/search", {"experiment_ids": [_experiment_id(url)], "filter": filter_string}).get("runs", [])


def _tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


# ---------------------------------------------------------------- the study rebuilt from runs (fast)


def _trial_run(number: int, state: str, score: float | None, batch: str, run_id: str):  # noqa: ANN202
    from embedsweep.tracking import RecordedRun

    metrics = {} if score is None else {"pearson_cosine": score}
    tags = {"trial_number": str(number), "trial_state": state, "study_name": "s"}
    return RecordedRun(run_id, run_id, "FINISHED", {"batch": batch}, metrics, tags)


def test_the_study_rebuilt_from_runs_has_one_trial_per_number_with_the_mean_of_its_seeds() -> None:
    from optuna.trial import TrialState

    from embedsweep.studies.plots import study_from_runs

    runs = [
        _trial_run(0, "COMPLETE", 0.60, "16", "a"), _trial_run(0, "COMPLETE", 0.70, "16", "b"),  # one trial on two seeds
        _trial_run(1, "FAIL", None, "32", "c"), _trial_run(1, "COMPLETE", 0.50, "32", "d"),  # requeued, then complete
        _trial_run(2, "PRUNED", 0.10, "64", "e"),
        _trial_run(3, "FAIL", None, "16", "f"),
    ]  # fmt: skip
    study = study_from_runs(runs, ["batch"], "pearson_cosine")
    assert [t.user_attrs["trial_number"] for t in study.trials] == [0, 1, 2, 3]
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]
    assert study.trials[0].value == pytest.approx(0.65) and study.trials[1].value == pytest.approx(0.50)
    assert study.best_trial.params == {"batch": "16"} and study.metric_names == ["pearson_cosine"]


# ---------------------------------------------------------------- the verdict of a real grid


@pytest.mark.slow
def test_a_grid_ends_with_its_verdict_in_the_terminal_the_sweep_folder_and_the_parent_run(grid_sweep) -> None:
    cwd, proc = grid_sweep
    out = proc.stdout.splitlines()
    start = out.index("sweep verdict, ranked by pearson_cosine (4 jobs):")
    table = out[start + 2 : start + 6]
    assert [line.split()[0] for line in table] == ["1", "2", "3", "4"]
    assert {(line.split()[1], line.split()[2]) for line in table} == {("mnr", "16"), ("mnr", "32"), ("cosine", "16"), ("cosine", "32")}
    scores = [float(line.split()[3]) for line in table]
    assert scores == sorted(scores, reverse=True)
    assert out[start + 6].startswith("best: loss=")
    assert out[start + 7].startswith("  reproduce: python train.py loss=") and "model=tiny" in out[start + 7]
    # Then the ties, a line when no run beat the untouched model (a tiny random model may not), the
    # promotion note and the link, which ends the verdict.
    rest = out[start + 8 : next(i for i, line in enumerate(out) if line.startswith("runs in MLflow: ")) + 1]
    # Every job kept its similarities per eval pair, so the runs close to the best are compared pair by
    # pair: the line counts the rows the table marks tied, on the eval set's number of pairs.
    assert "best" in table[0].split(), out[start : start + 6]
    tied = sum("tied" in line.split() for line in table[1:])
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{cwd}/outputs/mlflow.db")
    pairs = {r.data.metrics["sets/eval_pairs"] for r in client.search_runs([client.get_experiment_by_name("embedsweep").experiment_id]) if "sets/eval_pairs" in r.data.metrics}
    (n,) = pairs
    if tied:
        expected = (f"{tied} run{'s are' if tied != 1 else ' is'} within noise of the best (the paired 95% bootstrap interval of its "
                    f"difference to the best, on the same {n:.0f} eval pairs, includes 0)")  # fmt: skip
    else:
        expected = (f"no other run is within noise of the best (the 95% bootstrap intervals of the others lie below the best's, "
                    f"or, paired on the same {n:.0f} eval pairs, their difference to the best does)")  # fmt: skip
    assert rest[0] == expected
    assert any(line.startswith("not promoted: the best job (loss=") and "saved no model" in line for line in rest)  # save_model=false
    assert rest[-1].startswith("runs in MLflow: http://127.0.0.1:5000/#/experiments/") and len(rest) <= 4
    (summary,) = (cwd / "outputs" / "multiruns").glob("*/*/summary.md")
    assert summary.read_text().count("| FINISHED |") == 4


# ---------------------------------------------------------------- a real server: REST, report, browser


@pytest.mark.slow
def test_the_server_shows_the_parent_and_its_children_over_rest(server: str) -> None:
    (parent,) = _search(server, "tags.`embedsweep.role` = 'sweep'")
    assert parent["info"]["status"] == "FINISHED"
    metrics = {m["key"]: m["value"] for m in parent["data"]["metrics"]}
    assert metrics["jobs_finished"] == 4 and metrics["jobs_failed"] == 0
    children = _search(server, f"tags.`mlflow.parentRunId` = '{parent['info']['run_id']}'")
    assert len(children) == 4 and {c["info"]["status"] for c in children} == {"FINISHED"}
    best = max(children, key=lambda c: {m["key"]: m["value"] for m in c["data"]["metrics"]}["answer/pearson_cosine"])
    assert _tags(parent)["best_run_id"] == best["info"]["run_id"]
    artifacts = _rest(server, f"artifacts/list?run_id={parent['info']['run_id']}")
    assert "summary.md" in {f["path"] for f in artifacts.get("files", [])}


@pytest.mark.slow
def test_the_report_reads_the_server_and_attaches_table_and_plot(server: str, tmp_path: Path) -> None:
    proc = _run(["-m", "embedsweep.conclude.report", "--tracking-uri", server, "--out", str(tmp_path)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep verdict, ranked by pearson_cosine (4 jobs):" in proc.stdout
    assert (tmp_path / "scores.png").read_bytes().startswith(PNG)
    assert (tmp_path / "summary.md").read_text().count("| FINISHED |") == 4
    (parent,) = _search(server, "tags.`embedsweep.role` = 'sweep'")
    listed = _rest(server, f"artifacts/list?run_id={parent['info']['run_id']}&path=report")
    assert {f["path"] for f in listed["files"]} == {"report/summary.md", "report/scores.png"}


@pytest.mark.slow
def test_make_ui_link_opens_the_sweep_runs_in_a_real_browser(server: str, grid_sweep, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        require("Chromium", "Chromium is not installed (apt-get install chromium; .ci/run installs it)")
    cwd, _ = grid_sweep
    link = _run(["-m", "embedsweep.conclude.report", "--link"], cwd)  # what `make ui` prints
    assert link.returncode == 0, link.stderr
    url = link.stdout.strip().replace("http://127.0.0.1:5000", server)
    assert "workflowType=machine_learning" in url and "searchFilter=tags.mlflow.parentRunId" in url
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--window-size=1600,1000", "--virtual-time-budget=30000"]  # fmt: skip
    dom = subprocess.run([chromium, *flags, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    for name in ("loss=mnr batch=16", "loss=mnr batch=32", "loss=cosine batch=16", "loss=cosine batch=32"):
        assert name in dom.stdout, f"{name} is not listed on {url}"
    shot = tmp_path / "runs.png"
    subprocess.run([chromium, *flags, f"--user-data-dir={tmp_path / 'profile2'}", f"--screenshot={shot}", url], capture_output=True, timeout=300)
    assert shot.read_bytes().startswith(PNG) and shot.stat().st_size > 10_000


# MLflow's chart view, as its page shows it: a section header (title, then its chart count) or a chart card (its title).
CHART_VIEW = re.compile(
    r'data-testid="experiment-view-compare-runs-section-header".*?white-space: pre;">(?P<section>[^<]*)</div><div[^>]*>\((?P<count>\d+)\)'
    r'|data-testid="experiment-view-compare-runs-card".*?<h4[^>]*title="(?P<chart>[^"]*)"'
)


def chart_sections(dom: str) -> list[tuple[str, int, list[str]]]:
    """The chart view's sections in page order: title, the count its header shows, the charts under it."""
    sections: list[tuple[str, int, list[str]]] = []
    for found in CHART_VIEW.finditer(dom):
        if found["section"] is not None:
            sections.append((found["section"], int(found["count"]), []))
        else:
            sections[-1][2].append(found["chart"])
    return sections


@pytest.mark.slow
def test_the_chart_view_opens_on_the_final_scores_alone(server: str, grid_sweep, tmp_path: Path) -> None:
    """The sweep's link with the chart view on: the first section holds pearson_cosine and spearman_cosine
    alone; baseline, efficiency, training history and the rest follow, each in its own section, and no
    metric is left in MLflow's unprefixed "Model metrics" (metric_names.py)."""
    from embedsweep.run import metric_names as names

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        require("Chromium", "Chromium is not installed (apt-get install chromium; .ci/run installs it)")
    cwd, _ = grid_sweep
    link = _run(["-m", "embedsweep.conclude.report", "--link"], cwd)
    assert link.returncode == 0, link.stderr
    url = link.stdout.strip().replace("http://127.0.0.1:5000", server) + "&compareRunsMode=CHART"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--virtual-time-budget=60000", "--run-all-compositor-stages-before-draw"]  # fmt: skip
    # A window tall enough for every chart to be drawn: the page renders only the cards in view.
    dom = subprocess.run([chromium, *flags, "--window-size=1600,7000", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    sections = chart_sections(dom.stdout)
    titles = [title for title, _, _ in sections]
    # A sweep's jobs never score the test set: every section but test/, in metric_names' order, then MLflow's own two.
    assert titles == [s for s in names.SECTIONS if s != names.TEST] + ["Model metrics", "System metrics"], titles
    first_title, first_count, first_charts = sections[0]
    assert (first_title, first_count, first_charts) == ("answer", 2, ["answer/pearson_cosine", "answer/spearman_cosine"])
    for title, count, charts in sections:
        assert len(charts) == count, (title, count, charts)  # every chart drawn, under the section its header counts
        assert all(c.startswith(f"{title}/") for c in charts), (title, charts)
    charts = {title: charts for title, _, charts in sections}
    assert {"baseline/pearson_cosine", "baseline/spearman_cosine"} <= set(charts["baseline"])
    assert {"efficiency/tokens_per_second", "efficiency/samples_per_second", "efficiency/peak_cpu_rss_mb"} <= set(charts["efficiency"])
    assert {"history/loss", "history/learning_rate", "history/pearson_cosine", "history/steps"} <= set(charts["history"])
    assert charts["Model metrics"] == []  # nothing left unsorted
    shot = tmp_path / "charts.png"
    subprocess.run([chromium, *flags, "--window-size=1600,1400", f"--user-data-dir={tmp_path / 'profile2'}", f"--screenshot={shot}", url],
                   capture_output=True, timeout=300)  # fmt: skip
    assert shot.read_bytes().startswith(PNG) and shot.stat().st_size > 10_000


# ---------------------------------------------------------------- an Optuna sweep's report


@pytest.mark.slow
def test_the_report_of_an_optuna_sweep_draws_optunas_plots(tmp_path: Path) -> None:
    sweep = [str(ROOT / "train.py"), "-m", "hparams_search=batch_warmup", *QUICK, "hydra.sweeper.n_trials=4",
             "hydra/sweeper/pruner=none", "batch=choice(8,16)"]  # fmt: skip
    proc = _run(sweep, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep verdict, ranked by pearson_cosine (4 jobs):" in proc.stdout
    report = _run(["-m", "embedsweep.conclude.report", "--out", str(tmp_path / "report")], tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    for name in ("summary.md", "scores.png", "history.png", "importances.png", "parallel.png"):
        assert (tmp_path / "report" / name).is_file(), name
    assert (tmp_path / "report" / "history.png").read_bytes().startswith(PNG)

    import optuna
    from mlflow import MlflowClient

    study = optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path}/outputs/optuna.db")
    assert study.metric_names == ["pearson_cosine"]  # Optuna's own tools see the metric's name
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/outputs/mlflow.db")
    for trial in study.trials:  # each trial leads back to its MLflow run
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.tags["trial_number"] == str(trial.number)
