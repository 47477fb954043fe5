#!/usr/bin/env bash
# The nightly sweep: the one command that every schedule runs (deploy/cron.txt, embedsweep-sweep.service,
# sweep.sbatch) and `make nightly` runs by hand. What a night does (same data, new data, a spent budget,
# a failure) and how to be notified: docs/schedules.md.
#
#   deploy/nightly.sh [overrides...]      e.g. deploy/nightly.sh launcher=slurm hydra.sweeper.n_jobs=4
#
# Overrides given as arguments come after the nightly defaults below, so they win (Hydra keeps the
# last value of a key): another loss, data, budget (hydra.sweeper.n_trials per night,
# hydra.sweeper.max_trials per data version), notify=command ...
#
# Settings come from the environment (cron sources the env file, systemd reads it with EnvironmentFile=,
# sbatch passes its own environment), all optional:
#   EMBEDSWEEP_HOME          the checkout with its .venv     (default: the folder above this script)
#   EMBEDSWEEP_PYTHON        its Python                      (default .venv/bin/python in the checkout)
#   EMBEDSWEEP_OUTPUT_ROOT   Hydra's folders, the stores, the lock  (default outputs/ in the checkout)
#   EMBEDSWEEP_NOTIFY_URL    set: each night's verdict is POSTed there as JSON (notify=webhook)
#   EMBEDSWEEP_OPTUNA_STORAGE, MLFLOW_TRACKING_URI and their secrets: read by train.py itself
# Secrets only through the environment or files, never as arguments (`ps` shows them, Hydra saves them).
set -euo pipefail
umask 077  # everything a sweep writes (stores, logs, models): this user's only
cd "${EMBEDSWEEP_HOME:-$(dirname "$0")/..}"

out=${EMBEDSWEEP_OUTPUT_ROOT:-outputs}
mkdir -p "$out"
# One sweep of this checkout at a time, however it was started (the next night while this one still
# runs, a run by hand, a second sbatch): a start that finds the lock taken says so and ends at once.
# The lock is in the project's own output folder, where no other user can take it.
exec 9>"$out/.sweep.lock"
if ! flock -n 9; then
  echo "embedsweep-nightly: another sweep holds $out/.sweep.lock; not starting a second one" >&2
  exit 75
fi
export HF_HUB_OFFLINE=1

# The nightly defaults. A night whose training or eval data changed moves on to a new study for that
# data version (on_new_data=new_study) and starts it with the best configurations of the previous
# study (warm_start.from_study=auto); the champion is scored on today's test pairs first
# (promote.check_drift). Same data: the study resumes until hydra.sweeper.max_trials, then the night
# says "nothing to do" and exits 0.
nightly=(
  hparams_search=batch_warmup loss=mnr
  hydra.sweeper.on_new_data=new_study
  hydra.sweeper.warm_start.from_study=auto
  promote.check_drift=true
)
if [[ -n ${EMBEDSWEEP_NOTIFY_URL:-} ]]; then
  nightly+=(notify=webhook)  # the URL itself stays in the environment (conf/notify/webhook.yaml)
fi
exec "${EMBEDSWEEP_PYTHON:-.venv/bin/python}" train.py -m "${nightly[@]}" "$@"
