#!/usr/bin/env bash
# One run on a GPU machine: the conformance suite on the GPU backends (CuPy,
# torch CUDA, JAX on its default device) against NumPy and the golden
# vectors, the GPU backends' unit tests, then the speed benchmark on the GPU.
# Results land in $OUT (default ./gpu-out): conformance.json, tests.log,
# bench.json, versions.txt.  On a machine without a GPU every GPU backend
# skips with its reason and the run still completes.
#
#   bash conformance/gpu/run.sh          # from the repository root
#
# A machine without array-api-compat gets it from wheels in ./.whl (see
# docs/performance.md for how the device run was made).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
if ! python3 -c "import array_api_compat" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  python3 - <<'PY'
import importlib
for m in ("numpy", "array_api_compat", "array_api_strict", "torch", "jax", "cupy", "optax", "mpmath"):
    try:
        print(m, importlib.import_module(m).__version__)
    except ImportError as e:
        print(m, "absent:", e)
import jax; print("jax devices", jax.devices())
PY
} > "$OUT/versions.txt" 2>&1
cat "$OUT/versions.txt"

GPU_BACKENDS=${GPU_BACKENDS:-numpy,torch.cuda,cupy,jax,jax.jit}
echo "== conformance on $GPU_BACKENDS"
timeout ${CONF_TIMEOUT:-200} python3 -m gammace_ref conformance --backends ${GPU_BACKENDS//,/ } \
  --json "$OUT/conformance.json" 2>&1 | tail -30
echo "== unit tests of the GPU backends"
timeout ${TEST_TIMEOUT:-120} python3 -m pytest -q -p no:cacheprovider tests -k "cupy or torch.cuda" -x \
  -W "ignore::DeprecationWarning" > "$OUT/tests.log" 2>&1; echo "exit $?" >> "$OUT/tests.log"
tail -5 "$OUT/tests.log"
echo "== benchmark"
timeout ${BENCH_TIMEOUT:-120} python3 benchmarks/speed.py --only torch-cuda jax cupy \
  --shapes 4096x32000 4096x128256 --json "$OUT/bench.json" 2>&1 | tail -20
