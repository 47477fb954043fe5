# `make sweep` and `make test` do all the set-up themselves: they create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch first, pinned: a loose `torch` requirement resolves to a multi-GB CUDA build on CPU machines
# that have the 2.13.0 CPU wheel at hand. Override for your GPU machine, e.g. TORCH_SPEC="torch==2.9.1".
TORCH_SPEC ?= torch==2.13.0
# Tests run on this many worker processes (pytest-xdist). Most of a test's time is a `train.py`
# subprocess importing torch, sentence-transformers and MLflow on one core, so 2 workers keep 2 cores
# busy. Each test module stays on one worker (loadscope): its module fixtures (a shared sweep, the
# SLURM node's tests taking turns) then run once.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope
export HF_HUB_DISABLE_PROGRESS_BARS := 1

.PHONY: help venv sweep train nightly test test-slow test-all ui report bench docs clean

help:
	@echo "make sweep      the main job: python train.py -m loss=mnr,cosine batch=32,128 (offline defaults)"
	@echo "make nightly    the nightly sweep as the schedules run it (deploy/nightly.sh), ARGS=\"overrides\""
	@echo "make test       the fast test suite;  make test-all  adds the slow end-to-end sweeps"
	@echo "make ui         MLflow UI on http://127.0.0.1:5000 over train.py's store (prints the latest sweep's link)"
	@echo "make report     the latest sweep's table and plots in outputs/report/, attached to its MLflow run"
	@echo "make bench      quality benchmark on ../shared/data: bench/results/quality.json, docs/results.md"
	@echo "make docs       the documentation site (docs/, mkdocs.yml) built into site/, strict: broken links fail"

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

venv: $(BIN)/.installed

sweep: venv
	$(BIN)/python train.py -m loss=mnr,cosine batch=32,128

train: venv
	$(BIN)/python train.py $(ARGS)

# The nightly sweep by hand, as every schedule runs it (deploy/nightly.sh; docs/schedules.md). ARGS are
# added after its defaults, e.g. ARGS="hydra.sweeper.n_trials=2".
nightly: venv
	EMBEDSWEEP_PYTHON=$(BIN)/python deploy/nightly.sh $(ARGS)

test: venv
	$(PYTEST)

# pytest exits 5 when a marker selects nothing; that is not a failure here.
test-slow: venv
	$(PYTEST) -m slow || [ $$? -eq 5 ]

test-all: test test-slow

# The UI over the store train.py writes to ($MLFLOW_TRACKING_URI, else $EMBEDSWEEP_OUTPUT_ROOT's or
# outputs/mlflow.db); prints the link that opens the latest sweep's runs (MLflow 3 would otherwise open its
# GenAI view). ARGS="--tracking-uri sqlite:///elsewhere.db --port 5001" for another store or port.
ui: venv
	$(BIN)/python -m embedsweep.tracking.ui $(ARGS)

# The latest sweep's table and plots (summary.md, PNGs), also attached to its parent run.
report: venv
	$(BIN)/python -m embedsweep.conclude.report --out "$(or $(EMBEDSWEEP_OUTPUT_ROOT),outputs)/report" $(ARGS)

# Writes bench/results/quality.json and renders docs/results.md again (bench/results_page.py).
bench: venv
	$(BIN)/python bench/quality.py

# The documentation site: a broken link or anchor, or a page missing from mkdocs.yml's nav, fails it.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf outputs/runs outputs/multiruns outputs/mlflow.db outputs/mlartifacts outputs/optuna.db
