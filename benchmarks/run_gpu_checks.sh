#!/usr/bin/env bash
# The GPU checks in one run, within one device call, under a time budget (issue 15; issue 5's with PARTS).
#
# From a session whose task has a device (the `run` tool), from the repository root:
#     run(command="bash benchmarks/run_gpu_checks.sh", carry=["build/wheels"], timeout_s=560)
# Before that, on the session's own machine (the device has no network; build/ is git-ignored):
#     .venv/bin/pip download diffusers==0.42.1 pytest pluggy iniconfig pygments --no-deps -d build/wheels
# The GPU cost baselines (graph_floor.py, treg_floor.py: random full-size SD 1.5, eager and CUDA-graphed
# model calls) are part of the repository, in benchmarks/baselines/.
# (GPU images carry torch and transformers but not diffusers or pytest.)
#
# Parts, in this order (PARTS=a,b,... runs a subset, still in this order), each with its own time
# limit, each skipped when less than 30 s of BUDGET_S (default 480 s of the call) is left. The first
# four fit the budget; the rest are for a second call (PARTS=compile_true,compile_check,gpu_tests).
# CANDIDATES=a,b,... passes --candidates to the candidates part (e.g. those a first call skipped).
#   candidates    gpu_candidates.py: graph_floor.py, today's graphed solve, each speed candidate alone
#   compile_warm  gpu_candidates.py --candidates compile in a new process: compile time from the cache
#   memory        gpu_memory_paths.py: memory short -> eager, memory not returned, 1024 default vs low-memory
#   batching      batching.py at the reference 200 steps: planes/s at batch 4 over batch 1
#   compile_true  gpu_memory_paths.py --sections reference,compile: load_model(compile=True)'s path
#   compile_check compile_check.py: load_model("tiny", compile=True) restores like eager (float32)
#   gpu_tests     tests/gpu (CUDA-only tests of the tiny model)
# and, only when named in PARTS, issue 5's: gpu_solve (with treg_floor.py), gpu_memory, tiling.
#
# Results come back in at most 3 files: $OUT/checks.log (every part's output), $OUT/results.json
# (every part's JSON, merged after each part, so a call cut short still returns what ran) and
# $OUT/gpu_candidates.jsonl (one line per candidate, written as each finishes; compile_warm.jsonl too).
#
#     bash benchmarks/run_gpu_checks.sh --smoke   # every script end to end on the tiny model, on the CPU
set -u
cd "$(dirname "$0")/.."
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
RESULTS=${OUT:-/tmp/treg_gpu_checks}
WORK=$(mktemp -d)  # the scripts' own JSON files; merged into $RESULTS/results.json
mkdir -p "$RESULTS"
PY=${PYTHON:-python}
LOG="$RESULTS/checks.log"
if [ "$SMOKE" = 1 ]; then
    BUDGET=${BUDGET_S:-7200}
    DEFAULT_PARTS=candidates,compile_warm,memory,batching,compile_true,compile_check,gpu_tests,gpu_solve,tiling
    export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/treg_inductor_smoke} OMP_NUM_THREADS=1
else
    BUDGET=${BUDGET_S:-480}
    DEFAULT_PARTS=candidates,compile_warm,memory,batching,compile_true,compile_check,gpu_tests
    export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/treg_inductor_cache}
    for pair in diffusers:diffusers pytest:pytest pluggy:pluggy iniconfig:iniconfig pygments:pygments; do
        module=${pair%%:*} wheel=${pair##*:}
        if ! $PY -c "import $module" 2>/dev/null; then
            $PY -m pip install --no-deps --no-index -q build/wheels/$wheel-*.whl || echo "$wheel wheel missing: see the header"
        fi
    done
fi
PARTS=",${PARTS:-$DEFAULT_PARTS},"
MEGA="$TORCHINDUCTOR_CACHE_DIR/treg_mega_cache.bin"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
{
    date -u "+%Y-%m-%d %H:%M:%S UTC"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tail -n +2
    $PY -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)" 2>&1
    echo "smoke=$SMOKE budget=${BUDGET}s parts=$PARTS inductor cache=$TORCHINDUCTOR_CACHE_DIR"
} | tee -a "$LOG"

merge() {  # every JSON the parts wrote so far -> $RESULTS/results.json
    $PY - "$WORK" "$RESULTS/results.json" <<'PY'
import json, pathlib, sys
work, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
merged = {}
for path in sorted(work.glob("*.json")):
    try:
        merged[path.stem] = json.loads(path.read_text())
    except ValueError as error:
        merged[path.stem] = {"unreadable": str(error)}
for path in sorted(work.glob("*.jsonl")):
    merged[path.name] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
target.write_text(json.dumps(merged, indent=1, default=str))
PY
    cp "$WORK"/*.jsonl "$RESULTS/" 2>/dev/null
}

check() {  # check NAME MAX_SECONDS COMMAND...: runs if named in PARTS and the budget allows
    local name=$1 limit=$2; shift 2
    case "$PARTS" in *",$name,"*) ;; *) return ;; esac
    local left=$((BUDGET - SECONDS))
    if [ "$left" -lt 30 ]; then echo "== $name: skipped, ${left}s of the budget left" | tee -a "$LOG"; return; fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
    local start=$SECONDS
    OUT="$WORK" PART_LIMIT_S=$limit timeout "$limit" "$@" >> "$LOG" 2>&1
    echo "== $name: rc=$? in $((SECONDS - start))s" | tee -a "$LOG"
    merge
}

if [ "$SMOKE" = 1 ]; then
    check candidates 3600 $PY benchmarks/gpu_candidates.py --smoke --mega-cache "$MEGA" ${CANDIDATES:+--candidates "$CANDIDATES"}
    check compile_warm 1800 $PY benchmarks/gpu_candidates.py --smoke --candidates compile --no-eager-bar --reps 1 --mega-cache "$MEGA" --name compile_warm --budget-s 100000
    check memory 600 $PY benchmarks/gpu_memory_paths.py --smoke --sections reference,policy,leak,low_memory,forced
    check batching 600 $PY benchmarks/batching.py --tiny --threads 1 --steps 4 --planes 4 --unsliced-vae
    check compile_true 1800 $PY benchmarks/gpu_memory_paths.py --smoke --sections reference,compile --name compile_true
    check compile_check 1800 $PY benchmarks/compile_check.py --device cpu
    check gpu_tests 300 $PY -m pytest tests/gpu -q -p no:cacheprovider --noconftest -rA
    check gpu_solve 600 $PY benchmarks/gpu_solve.py --smoke
    check tiling 600 $PY benchmarks/tiling.py --tiny --threads 1 --sizes 64,128 --tile 64 --overlap 16 --steps 2
else
    # candidates: ~30 s graph_floor.py, ~40 s today's path and its eager bar, ~15 s per plain candidate,
    # plus the compile time of the two compiled ones; the script skips what its part's limit cannot fit
    check candidates 250 $PY benchmarks/gpu_candidates.py --steps 200 --reps 2 --mega-cache "$MEGA" \
        ${CANDIDATES:+--candidates "$CANDIDATES"}
    check compile_warm 75 $PY benchmarks/gpu_candidates.py --candidates compile --no-floor --no-eager-bar --steps 20 --reps 1 --mega-cache "$MEGA" --name compile_warm --budget-s 100000
    check memory 80 $PY benchmarks/gpu_memory_paths.py --steps 20 --cap-gib 8 --sections reference,policy,leak,low_memory,forced
    check batching 70 $PY benchmarks/batching.py --steps 200 --planes 4 --unsliced-vae
    check compile_true 240 $PY benchmarks/gpu_memory_paths.py --steps 20 --cap-gib 8 --sections reference,compile --name compile_true
    check compile_check 120 $PY benchmarks/compile_check.py --device cuda
    check gpu_tests 90 $PY -m pytest tests/gpu -q -p no:cacheprovider --noconftest -rA
    # issue 5's checks, only when named in PARTS
    check gpu_solve 220 $PY benchmarks/gpu_solve.py --steps 200 --reps 3
    check gpu_memory 90 $PY benchmarks/gpu_memory.py --steps 20 --cap-gib 8
    check tiling 70 $PY benchmarks/tiling.py --sizes 512,1024,2048 --steps 10
fi

echo "== summary (${SECONDS}s)" | tee -a "$LOG"
$PY - "$RESULTS/results.json" <<'PY' 2>&1 | tee -a "$LOG"
import json, pathlib, sys
path = pathlib.Path(sys.argv[1])
data = json.loads(path.read_text()) if path.is_file() else {}
for name, part in data.items():
    if isinstance(part, list):
        for row in part:
            keep = ("candidate", "restore_s", "over_graphed", "over_graph_floor", "graph_floor_over", "max_abs_vs_graphed",
                    "rms_vs_graphed", "within_bar", "pays", "compile_s", "skipped", "error")
            print(" ", {k: (str(v)[:300] if k == "error" else v) for k, v in row.items() if k in keep})
        continue
    keep = {k: v for k, v in part.items() if k not in ("env", "baseline_graph_floor", "baseline_treg_floor")}
    print(name, json.dumps(keep, default=str)[:2500])
PY
rm -rf "$WORK"
