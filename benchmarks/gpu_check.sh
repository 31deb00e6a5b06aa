#!/usr/bin/env bash
# The GPU check: everything the project can say about a CUDA machine, in one run of ~8 minutes.
#
#   bash benchmarks/gpu_check.sh                  # results -> benchmarks/gpu_check_results.md (+ .json files)
#   bash benchmarks/gpu_check.sh --out DIR        # results folder of your choice
#   bash benchmarks/gpu_check.sh --dry-run        # print the commands it would run (no CUDA needed)
#
# It installs nothing: it uses the project's .venv if there is one (what `make install` creates), else the
# python on PATH, and needs only what the README's set-up installs (torchattacks, pyautoattack, timm, the
# project). Steps, each under its own time limit, each recorded (a failed step is reported and the others
# still run; the exit status is 1 if any failed):
#   1. the CUDA test subset (tests/test_cuda.py: skipped as a whole on a machine without CUDA);
#   2. bench_pgd: PGD-10 / FGSM ours vs torchattacks, fp32 and bf16 autocast (micro model, tiny ViT at 64 px);
#   3. bench_robust_accuracy: PGD-10 robust-accuracy path (early exit) vs torchattacks, incl. ViT-tiny 224 px;
#   4. bench_rpc_attention: fp32, bf16 and fp16, N up to 8192;
#   5. bench_autoattack: the reduced AutoAttack (fp32; neither AutoAttack library autocasts);
#   6. the quick suite on CUDA, fp32 and fp16 autocast (--limit 256), robust accuracies compared;
#   7. the quick suite on torchrun with 2 ranks over NCCL, if two GPUs exist (skipped with a message
#      otherwise), its numbers compared with the one-process fp32 run.
# Goals reported against: PGD-10 on ViT-tiny at 224 px >= 2x torchattacks' images/s; fp16 robust accuracy
# within 1 pp of fp32.
set -u -o pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
OUT="$HERE/gpu_check_out"
RESULTS="$HERE/gpu_check_results.md"
DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT="$2"; RESULTS="$2/gpu_check_results.md"; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (use --out DIR, --dry-run)" >&2; exit 2 ;;
    esac
done

cd "$ROOT"
if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY="$(command -v python3 || command -v python)"; fi
if [ -z "${PY:-}" ]; then echo "gpu_check.sh: no python found (run make install first)" >&2; exit 2; fi
BIN="$(dirname "$PY")"
if [ -x "$BIN/torchrun" ]; then TORCHRUN="$BIN/torchrun"; else TORCHRUN="$PY -m torch.distributed.run"; fi

# the commands, one per step: NAME|SECONDS|COMMAND (RUN_DIR and J are filled in below). The limits add up to
# 470 s, so the whole check ends within 8 minutes even when every step runs to its limit.
steps() {
    cat <<EOF
tests|45|$PY -m pytest -q tests/test_cuda.py
pgd|75|$PY benchmarks/bench_pgd.py --device cuda --repeats 3 --json $J/pgd.json
robust_accuracy|60|$PY benchmarks/bench_robust_accuracy.py --device cuda --repeats 3 --json $J/robust_accuracy.json
rpc_fp32|35|$PY benchmarks/bench_rpc_attention.py --device cuda --dtype float32 --tokens 64,197,1024,2048,4096,8192 --repeats 3 --json $J/rpc_fp32.json
rpc_bf16|25|$PY benchmarks/bench_rpc_attention.py --device cuda --dtype bfloat16 --tokens 64,197,1024,2048,4096,8192 --repeats 3 --json $J/rpc_bf16.json
rpc_fp16|25|$PY benchmarks/bench_rpc_attention.py --device cuda --dtype float16 --tokens 64,197,1024,2048,4096,8192 --repeats 3 --json $J/rpc_fp16.json
autoattack|45|$PY benchmarks/bench_autoattack.py --device cuda --quick --json $J/autoattack.json
suite_fp32|50|$PY -m robustbench_rpc run --suite quick --device cuda --amp fp32 --limit 256 --no-progress --no-report --out $RUN_DIR/quick_fp32
suite_fp16|50|$PY -m robustbench_rpc run --suite quick --device cuda --amp fp16 --limit 256 --no-progress --no-report --out $RUN_DIR/quick_fp16
torchrun_nccl|60|$TORCHRUN --standalone --nproc_per_node 2 -m robustbench_rpc run --suite quick --device cuda --amp fp32 --limit 256 --no-progress --no-report --out $RUN_DIR/quick_ddp2
EOF
}

if [ "$DRY" = 1 ]; then
    J="$OUT/json" RUN_DIR="$OUT/runs"
    steps | cut -d'|' -f3-
    exit 0
fi

GPUS="$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null || echo 0)"
if [ "${GPUS:-0}" -lt 1 ]; then
    echo "gpu_check.sh: no CUDA device: nothing measured (torch.cuda.is_available() is False for $PY)" >&2
    exit 3
fi

J="$OUT/json"; RUN_DIR="$OUT/runs"; LOGS="$OUT/logs"
rm -rf "$J" "$RUN_DIR" "$LOGS"
mkdir -p "$J" "$RUN_DIR" "$LOGS"
STATUS="$OUT/status.tsv"; : > "$STATUS"
START=$(date +%s)
failed=0
while IFS='|' read -r name limit cmd; do
    if [ "$name" = torchrun_nccl ] && [ "$GPUS" -lt 2 ]; then
        echo "[gpu_check] $name: skipped, $GPUS GPU on this machine (a 2-rank NCCL run needs two)"
        printf '%s\tskipped\t0\tonly %s GPU\n' "$name" "$GPUS" >> "$STATUS"
        continue
    fi
    echo "[gpu_check] $name (limit ${limit}s): $cmd"
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" bash -c "$cmd" > "$LOGS/$name.log" 2>&1
    rc=$?
    dt=$(( $(date +%s) - t0 ))
    if [ $rc -eq 0 ]; then state=ok; elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then state="timeout"; failed=1; else state="failed"; failed=1; fi
    echo "[gpu_check] $name: $state in ${dt}s (rc $rc; log $LOGS/$name.log)"
    printf '%s\t%s\t%s\trc %s\n' "$name" "$state" "$dt" "$rc" >> "$STATUS"
done < <(steps)

"$PY" "$HERE/gpu_check_report.py" --out "$OUT" --results "$RESULTS" --seconds $(( $(date +%s) - START )) || failed=1
echo "[gpu_check] results: $RESULTS"
exit $failed
