#!/usr/bin/env bash
# Re-run the CUDA-relevant tests on a lent GPU (device tool) after changes; log in $OUT/pytest.log.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1 IMGCLS_CACHE=/tmp/imgcls-cache
timeout ${1:-100} python3 -m pytest -q -p no:cacheprovider tests/test_metrics.py tests/test_loop.py tests/test_train_run.py \
  tests/test_train_options.py tests/test_inference.py tests/test_faults.py tests/test_evaluate.py > $OUT/pytest.log 2>&1
echo "pytest rc=$?"; tail -8 $OUT/pytest.log
