#!/usr/bin/env bash
# One prepared GPU session (device tool): install carried wheels, run bench/gpu_check.py and the
# CUDA-relevant tests. Results land in $OUT (gpu_check.json, gpu_check.log, pytest.log).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1 IMGCLS_CACHE=/tmp/imgcls-cache
nvidia-smi -L
python3 -c "import torch, torchvision, timm, torchmetrics; print(torch.__version__, torchvision.__version__, timm.__version__, torchmetrics.__version__, torch.cuda.get_device_name(0))"
timeout 150 python3 bench/gpu_check.py /tmp/gc > $OUT/gpu_check.log 2>&1; echo "gpu_check rc=$?"
cp /tmp/gc/gpu_check.json $OUT/ 2>/dev/null
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_metrics.py tests/test_loop.py tests/test_train_run.py \
  tests/test_train_options.py tests/test_inference.py tests/test_faults.py tests/test_export.py > $OUT/pytest.log 2>&1; echo "pytest rc=$?"
tail -5 $OUT/pytest.log; tail -30 $OUT/gpu_check.log
