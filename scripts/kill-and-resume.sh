#!/bin/bash
# Measures recovery: runs window_agg over INPUT with checkpoints, kills it (SIGKILL) after
# KILL_AT seconds, starts it again with the same flags, times the resumed run, and compares its
# output with REFERENCE (an uninterrupted run's output).
#
#   scripts/kill-and-resume.sh INPUT REFERENCE "QUERY FLAGS" KILL_AT [INTERVAL] [WORKERS]
#   scripts/kill-and-resume.sh bids10m.csv sessions.csv "--session 30s" 19 1s 1
#
# Uses target/release/window_agg (cargo build --release -p tideline-examples --bin window_agg).
set -u
cd "$(dirname "$0")/.." || exit 1
W=target/release/window_agg
INPUT=$1 REFERENCE=$2 FLAGS=$3 KILL=$4 IV=${5:-1s} WK=${6:-1}
DIR=$(mktemp -d)
# shellcheck disable=SC2086
RUST_LOG=tideline::checkpoint=info $W --input "$INPUT" --output "$DIR/o.csv" --late-output "$DIR/l.csv" $FLAGS \
    --quiet -w "$WK" --checkpoint-dir "$DIR/ckpt" --checkpoint-interval "$IV" 2> "$DIR/first.log" &
P=$!
sleep "$KILL"
if kill -9 "$P" 2>/dev/null; then
    wait "$P" 2>/dev/null
    echo "killed after $KILL s; last checkpoints:"
    grep "checkpoint complete" "$DIR/first.log" | tail -2 | sed 's/.*checkpoint complete/ /'
else
    echo "the run completed before $KILL s: nothing to resume (kill earlier)"
fi
# shellcheck disable=SC2086
RUST_LOG=tideline::checkpoint=info /usr/bin/time -f "resumed run: %e s, peak RSS %M KB" $W --input "$INPUT" \
    --output "$DIR/o.csv" --late-output "$DIR/l.csv" $FLAGS -w "$WK" --checkpoint-dir "$DIR/ckpt" \
    --checkpoint-interval "$IV" 2> "$DIR/second.log"
grep -E "resuming from checkpoint [0-9]+ in|resumed run" "$DIR/second.log"
cmp -s "$DIR/o.csv" "$REFERENCE" && echo "output identical to the reference" || echo "OUTPUT DIFFERS from $REFERENCE"
rm -rf "$DIR"
