#!/usr/bin/env bash
# Data parallel over MPI against threads on one machine, same job: 1 process x P threads against P processes x 1
# thread (`mpirun -n P`), alternating, in one session. Prints, per run: seconds per optimizer step (steps 2..N: the
# first warms up), and for the MPI runs each process's bytes sent and received per step and the share of its time
# spent inside collectives (moving bytes and waiting for the slowest process), from the line each process prints
# at the end. Not a test.
#
#   crates/trainer-cli/examples/bench_mpi.sh MODEL TEXT [steps] [rounds] [train flags...]
#
# Build first: cargo build --release -p trainer-cli --features distributed
# P: PROCS (default 2). The train flags should give grad_accum a multiple of P. The binary: TRAINER_CLI (default
# target/release/trainer-cli). As root, Open MPI needs OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1.
set -euo pipefail

model=${1:?usage: bench_mpi.sh MODEL TEXT [steps] [rounds] [train flags...]}
text=${2:?usage: bench_mpi.sh MODEL TEXT [steps] [rounds] [train flags...]}
steps=${3:-4}
rounds=${4:-2}
shift $(( $# < 4 ? $# : 4 ))
procs=${PROCS:-2}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
bin=${TRAINER_CLI:-${CARGO_TARGET_DIR:-$root/target}/release/trainer-cli}
[ -x "$bin" ] || { echo "no trainer-cli at $bin: build it first (see the header)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

train=(train --model "$model" --text "$text" --max-steps "$steps" --save-every 0 --save-under-loss 0
       --adapter-formats peft --progress jsonl "$@")

# Seconds per step over steps 2..N of a training_log.jsonl.
per_step() {
  sed -n 's/.*"step":\([0-9]*\),.*"time_s":\([0-9.e-]*\).*/\1 \2/p' "$1" |
    awk 'NR == 1 { s0 = $1; t0 = $2 } { s = $1; t = $2 } END { if (s > s0) printf "%.2f", (t - t0) / (s - s0); else print "n/a" }'
}

for round in $(seq 1 "$rounds"); do
  out="$work/threads-$round"
  RAYON_NUM_THREADS=$procs "$bin" "${train[@]}" --output "$out" 2>"$out.err" >/dev/null ||
    { tail -5 "$out.err" >&2; exit 1; }
  echo "round $round  1 process x $procs threads:  $(per_step "$out/training_log.jsonl") s/step"

  out="$work/mpi-$round"
  mpirun -n "$procs" --bind-to none -x RAYON_NUM_THREADS=1 "$bin" "${train[@]}" --output "$out" \
    2>"$out.err" >/dev/null || { tail -5 "$out.err" >&2; exit 1; }
  echo "round $round  $procs processes x 1 thread:  $(per_step "$out/training_log.jsonl") s/step"
  if ! cmp -s "$work/threads-$round/adapter_model.safetensors" "$out/adapter_model.safetensors"; then
    echo "  the adapters differ!"
  fi
  sed -n 's/^process \([0-9]*\) of [0-9]*: \([0-9]*\) collectives, sent \([0-9.]*\) MB, received \([0-9.]*\) MB, \([0-9.]*\) s in them (\([0-9.]*\)% of the \([0-9.]*\) s since the first)$/\1 \2 \3 \4 \5 \6 \7/p' "$out.err" |
    sort -n | while read -r rank calls sent received inside share since; do
      awk -v r="$rank" -v c="$calls" -v s="$sent" -v rc="$received" -v i="$inside" -v sh="$share" -v w="$since" -v n="$steps" \
        'BEGIN { printf "  process %s: %.2f MB sent + %.2f MB received per step, %s collectives, %.2f s of %.2f s inside them (%s%%)\n", r, s / n, rc / n, c, i, w, sh }'
    done
done
