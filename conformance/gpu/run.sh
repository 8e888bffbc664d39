#!/usr/bin/env bash
# One run on a GPU machine: the GPU backends' unit tests, the oracle on CUDA
# (conformance/gpu/oracle.py: the adapters and example kernels in bf16/fp16,
# training semantics, fused linear, CuPy float16), the conformance suite on
# the GPU backends (CuPy, torch CUDA, JAX on its default device) against NumPy
# and the golden vectors, then the speed benchmarks (float32 and bfloat16,
# with the bandwidth floor) and the hidden-states path at LM scale.
# Results land in $OUT (default ./gpu-out): versions.txt, tests.log,
# oracle.json, conformance.json, bench-f32.json, bench-bf16.json,
# linear.json.  On a machine without a GPU every GPU backend
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
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
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

echo "== unit tests of the GPU backends (slow ones included)"
timeout ${TEST_TIMEOUT:-100} python3 -m pytest -q -p no:cacheprovider -m "slow or not slow" tests gammace_ref/conformance \
  -k "cupy or cuda or gpu" -W "ignore::DeprecationWarning" > "$OUT/tests.log" 2>&1; echo "exit $?" >> "$OUT/tests.log"
tail -8 "$OUT/tests.log"
echo "== the oracle on CUDA"
timeout ${ORACLE_TIMEOUT:-130} python3 conformance/gpu/oracle.py --out "$OUT" 2>&1 | tail -60
GPU_BACKENDS=${GPU_BACKENDS:-numpy,torch.cuda,cupy,jax}
echo "== conformance on $GPU_BACKENDS"
timeout ${CONF_TIMEOUT:-90} python3 -m gammace_ref conformance --backends ${GPU_BACKENDS//,/ } \
  --json "$OUT/conformance.json" 2>&1 | tail -12
echo "== benchmarks"
timeout ${BENCH_TIMEOUT:-45} python3 benchmarks/speed.py --only torch-cuda jax cupy \
  --shapes 8192x128256 --json "$OUT/bench-f32.json" 2>&1 | tail -12
timeout ${BENCH_TIMEOUT:-45} python3 benchmarks/speed.py --only torch-cuda jax --dtype bfloat16 \
  --shapes 8192x128256 --json "$OUT/bench-bf16.json" 2>&1 | tail -12
timeout ${BENCH_TIMEOUT:-45} python3 benchmarks/linear_cuda.py --json "$OUT/linear.json" 2>&1 | tail -6
