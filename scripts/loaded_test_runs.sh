#!/usr/bin/env bash
# Three consecutive `make test` runs in a fresh clone of this repository while
# two CPU-bound processes run beside them: the README's loaded figures.
#   scripts/loaded_test_runs.sh [clone dir] [log]
# Writes each run's start, end, exit status and pytest summary to the log,
# the load average every 10 s to <log>.load, each run's output to <log>.runN.
set -u
SOURCE=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
DIR=${1:-/tmp/loaded-test-runs}
OUT=${2:-/tmp/loaded-test-runs.log}
rm -rf "$DIR" && git clone -q "$SOURCE" "$DIR" && cd "$DIR" || exit 1
echo "commit $(git rev-parse --short HEAD)" > "$OUT"
: > "$OUT.load"
python3 -c 'while True: pass' & HOG1=$!
python3 -c 'while True: pass' & HOG2=$!
( while sleep 10; do echo "load $(date +%T) $(cut -d' ' -f1 /proc/loadavg)"; done ) >> "$OUT.load" &
SAMPLER=$!
trap 'kill $HOG1 $HOG2 $SAMPLER 2>/dev/null' EXIT
failed=0
for i in 1 2 3; do
  echo "run $i start $(date +%T)" >> "$OUT"
  start=$(date +%s)
  make test > "$OUT.run$i" 2>&1; rc=$?
  [ $rc -eq 0 ] || failed=1
  echo "run $i end $(date +%T) rc=$rc wall=$(( $(date +%s) - start ))s" \
    "$(grep -E 'passed|failed' "$OUT.run$i" | tail -1)" >> "$OUT"
done
cat "$OUT"
exit $failed
