#!/usr/bin/env bash
# Runs bench_train (this project) and bench_peft.py (PyTorch + PEFT) alternately on the same model, data and
# settings, in one session, and prints each run's figures and the ratios ours / PyTorch. Not a test.
#
#   PYTHON=path/to/venv/bin/python crates/trainer-core/examples/bench_side_by_side.sh HF_DIR [steps] [rounds]
#
# HF_DIR: the model as a Hugging Face folder, made from the same GGUF with
#   cargo run --release -p trainer-cli -- convert --model models/SmolLM2-135M-Instruct.Q4_1.gguf --out HF_DIR
# PYTHON: an interpreter with torch, transformers and peft (default python3); PyTorch runs with its defaults.
# The GGUF comes from TRAINER_TEST_MODEL (default models/SmolLM2-135M-Instruct.Q4_1.gguf). Build bench_train first:
#   cargo build --release -p trainer-core --example bench_train
# Ours runs directly, as an installed binary would (no allocator variables), with base=f32 (the weights in the
# form PyTorch trains them). BASELINE=path/to/an/older/bench_train adds a third contender each round, run with the
# glibc malloc variables the project's cargo configuration used to set (MALLOC_MMAP_THRESHOLD_=33554432
# MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=536870912), as `cargo run` ran it.
set -euo pipefail

hf_dir=${1:?usage: bench_side_by_side.sh HF_DIR [steps] [rounds]}
steps=${2:-3}
rounds=${3:-2}
python=${PYTHON:-python3}
threads=${THREADS:-2}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
bench=${BENCH_TRAIN:-${CARGO_TARGET_DIR:-$root/target}/release/examples/bench_train}
[ -x "$bench" ] || { echo "no bench_train at $bench: build it first (see the header)" >&2; exit 1; }
"$python" -c 'import torch, transformers, peft' || { echo "$python lacks torch/transformers/peft" >&2; exit 1; }

results=$(mktemp)
trap 'rm -f "$results"' EXIT

run() { # run NAME TARGETS COMMAND...
    local name=$1 targets=$2
    shift 2
    local load
    load=$(cut -d' ' -f1 /proc/loadavg)
    local out
    out=$("$@" 2>&1) || { echo "$out" >&2; echo "$name $targets failed" >&2; exit 1; }
    echo "$out" | grep -E '^(step|targets=|cpu_s|RESULT)' | sed "s/^/[$name $targets] /"
    echo "$name $targets load=$load $(echo "$out" | grep '^RESULT' | sed 's/^RESULT //')" >>"$results"
}

for round in $(seq 1 "$rounds"); do
    for targets in qv all; do
        echo "== round $round, $targets =="
        run ours "$targets" env -u MALLOC_MMAP_THRESHOLD_ -u MALLOC_TRIM_THRESHOLD_ -u MALLOC_TOP_PAD_ \
            RAYON_NUM_THREADS="$threads" "$bench" "$targets" "$steps" base=f32
        if [ -n "${BASELINE:-}" ]; then
            run baseline "$targets" env RAYON_NUM_THREADS="$threads" MALLOC_MMAP_THRESHOLD_=33554432 \
                MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=536870912 "$BASELINE" "$targets" "$steps"
        fi
        run torch "$targets" env TORCH_THREADS="$threads" OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads" \
            "$python" "$here/bench_peft.py" "$hf_dir" "$targets" "$steps"
    done
done

echo
echo "== per run (1-minute load average at the start of each run) =="
cat "$results"
echo
echo "== ours / PyTorch (best and median over all runs of each side) =="
awk '
function val(s, key,   m) { if (match(s, key "=[0-9.]+")) return substr(s, RSTART + length(key) + 1, RLENGTH - length(key) - 1); return 0 }
{
    k = $1 " " $2
    n[k]++
    tb = val($0, "tokens_per_s_best"); tm = val($0, "tokens_per_s_median"); r = val($0, "peak_rss_mb")
    if (tb > best[k]) best[k] = tb
    med[k, n[k]] = tm
    if (r > rss[k]) rss[k] = r
}
function median(k,   i, j, t, c) {
    c = n[k]
    for (i = 1; i <= c; i++) a[i] = med[k, i]
    for (i = 1; i <= c; i++) for (j = i + 1; j <= c; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return (c % 2) ? a[(c + 1) / 2] : (a[c / 2] + a[c / 2 + 1]) / 2
}
END {
    for (ti = 1; ti <= 2; ti++) {
        t = (ti == 1) ? "qv" : "all"
        o = "ours " t; p = "torch " t; b = "baseline " t
        if (!(o in n) || !(p in n)) continue
        printf "%-3s tokens/s best: ours %.1f torch %.1f ratio %.2fx | median-of-medians: ours %.1f torch %.1f ratio %.2fx | peak RSS: ours %d MB torch %d MB ratio %.2fx\n", \
            t, best[o], best[p], best[o] / best[p], median(o), median(p), median(o) / median(p), rss[o], rss[p], rss[o] / rss[p]
        if (b in n)
            printf "%-3s against the baseline (old engine, malloc variables): tokens/s best %.1f vs %.1f (%.2fx), median-of-medians %.1f vs %.1f (%.2fx), peak RSS %d vs %d MB\n", \
                t, best[o], best[b], best[o] / best[b], median(o), median(b), median(o) / median(b), rss[o], rss[b]
    }
}' "$results"
