#!/usr/bin/env bash
# Every GPU check of issue 5 (speed and memory) in one run, within one device call.
#
# From a session whose task has a device (the `run` tool), from the repository root:
#     run(command="bash benchmarks/run_gpu_checks.sh", carry=["build/wheels", "benchmarks/baselines"],
#         timeout_s=540)
# Before that, on the session's own machine (the device has no network and no ../shared; both
# folders are git-ignored, the shared baselines are not part of this repository):
#     .venv/bin/pip download diffusers==0.42.1 pytest pluggy iniconfig pygments --no-deps -d build/wheels
#     mkdir -p benchmarks/baselines && cp ../shared/bench/treg_floor.py ../shared/bench/graph_floor.py benchmarks/baselines/
# (GPU images carry torch and transformers but not diffusers or pytest.)
# Results: $OUT/*.json and $OUT/*.log (the tool brings $OUT back); a summary is printed at the end.
# Order: the solve benchmark with the shared baselines (graph_floor.py, treg_floor.py) in the
# same run, the CUDA-only tests (tests/gpu), memory, batching, tiling; with
# WITH_COMPILE=1 also the torch.compile solve, with whatever time is left.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/treg_gpu_checks}
mkdir -p "$OUT"
PY=${PYTHON:-python}
BUDGET=${BUDGET_S:-470}
if [ -d ../shared/bench ]; then cp ../shared/bench/treg_floor.py ../shared/bench/graph_floor.py benchmarks/baselines/; fi
for pair in diffusers:diffusers pytest:pytest pluggy:pluggy iniconfig:iniconfig pygments:pygments; do
    module=${pair%%:*} wheel=${pair##*:}
    if ! $PY -c "import $module" 2>/dev/null; then
        $PY -m pip install --no-deps --no-index -q build/wheels/$wheel-*.whl || echo "$wheel wheel missing: see the header"
    fi
done
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia_smi.csv" 2>&1
$PY -c "import torch, diffusers, transformers; print(torch.__version__, diffusers.__version__, transformers.__version__)" \
    > "$OUT/versions.txt" 2>&1

check() {  # check NAME MAX_SECONDS COMMAND...: runs unless the budget is spent; log in $OUT/NAME.log
    local name=$1 limit=$2; shift 2
    local left=$((BUDGET - SECONDS))
    if [ "$left" -lt 30 ]; then echo "== $name: skipped, ${left}s left" | tee "$OUT/$name.log"; return; fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (limit ${limit}s)"
    local start=$SECONDS
    OUT="$OUT" timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "rc=$? in $((SECONDS - start))s" | tee -a "$OUT/$name.log"
}

check gpu_solve 220 $PY benchmarks/gpu_solve.py --steps 200 --reps 3     # + graph_floor.py, treg_floor.py
check gpu_tests 90 $PY -m pytest tests/gpu -q -p no:cacheprovider --noconftest -rA
check gpu_memory 90 $PY benchmarks/gpu_memory.py --steps 20 --cap-gib 8
check batching 60 $PY benchmarks/batching.py --steps 30 --planes 4
check tiling 70 $PY benchmarks/tiling.py --sizes 512,1024,2048 --steps 10
if [ "${WITH_COMPILE:-0}" = 1 ]; then
    check gpu_solve_compile 600 $PY benchmarks/gpu_solve.py --compile --no-baselines --steps 200 --reps 2
fi

echo "== summary"
$PY - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
for path in sorted(out.glob("*.json")):
    data = json.loads(path.read_text())
    keep = {k: v for k, v in data.items() if k not in ("env", "baseline_graph_floor", "baseline_treg_floor")}
    print(path.stem, json.dumps(keep, default=str)[:1500])
PY
