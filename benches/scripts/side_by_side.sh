#!/usr/bin/env bash
# Side by side with llama.cpp, alternately, on one machine in one sitting (docs/PERFORMANCE.md,
# issue 20): for each GGUF file, the memory bandwidth first, then ROUNDS rounds of
# `llama-bench -t 2 -p 128 -n 128 -r 3` followed by `bench-e2e --json --runs 3`.
#
#   LLAMA_BIN=<llama.cpp build>/bin benches/scripts/side_by_side.sh ROUNDS FILE...
#
# LLAMA_BIN: the directory holding llama-bench and its shared libraries (llama.cpp built from the
# llama-cpp-python sdist, with -mno-amx-tile -mno-amx-int8 -mno-amx-bf16 on CPUs with AMX).
# BENCH_E2E, BENCH_MEMBW: our release binaries (default: target/release/bench-e2e and
# bench-membw; build them with `cargo build --release -p fluent-ai-candle-benches --bin
# bench-e2e --bin bench-membw`). Run nothing else meanwhile: the machine has two cores.
set -euo pipefail
: "${LLAMA_BIN:?set LLAMA_BIN to the directory holding llama-bench}"
E2E=${BENCH_E2E:-target/release/bench-e2e}
MEMBW=${BENCH_MEMBW:-target/release/bench-membw}
rounds=${1:?usage: side_by_side.sh ROUNDS FILE...}
shift
[ $# -gt 0 ] || { echo "usage: side_by_side.sh ROUNDS FILE..." >&2; exit 2; }
for f in "$@"; do
  echo "== $f $(date -u +%H:%M:%S) $("$MEMBW")"
  for _ in $(seq "$rounds"); do
    LD_LIBRARY_PATH=$LLAMA_BIN "$LLAMA_BIN/llama-bench" -m "$f" -t 2 -p 128 -n 128 -r 3 2>/dev/null |
      grep -E "pp128|tg128" | awk -F'|' '{printf "llama %s %s ", $7, $8}'
    "$E2E" --model "$f" --json --runs 3 2>/dev/null | tail -1 | python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
print("| ours pp %.1f tg %.2f load %.2f rss/(file+kv) %.2f" % (d["prefill_tok_s"],
      d["decode_tok_s"], d.get("load_s", 0), d.get("rss_over_file_and_kv", 0)))'
  done
done
echo "== end $(date -u +%H:%M:%S) $("$MEMBW")"
