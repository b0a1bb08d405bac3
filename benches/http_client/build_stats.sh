#!/usr/bin/env bash
# Compile time from clean (release, `tiny` bin only), dependency count and stripped size
# for each client feature. Prints a markdown table. Needs the crates fetched (`cargo fetch`).
# Usage: ./build_stats.sh [reps]   (default 3; the median is reported)
set -euo pipefail
cd "$(dirname "$0")"
REPS=${1:-3}
cargo fetch -q
printf '| client feature | release build from clean, s (median of %s; runs) | crates: `-e normal` | crates: `-e normal,build` | stripped `tiny` size | delta vs none |\n' "$REPS"
echo '|---|---|---|---|---|---|'
base=0
for feat in ${FEATS:-none ureq reqwest reqwest-ring}; do
  if [ "$feat" = none ]; then fl=(); else fl=(--features "$feat"); fi
  td="target/stats-$feat"
  times=()
  for _ in $(seq "$REPS"); do
    rm -rf "$td"
    s=$(date +%s.%N)
    CARGO_TARGET_DIR="$td" cargo build -q --release --offline --bin tiny "${fl[@]}"
    e=$(date +%s.%N)
    times+=("$(echo "$e - $s" | bc)")
  done
  med=$(printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')
  runs=$(printf '%.1f ' "${times[@]}")
  # Distinct packages in the normal (non-build, non-dev) dependency graph, minus this crate.
  crates=$(cargo tree -q --offline -e normal --prefix none "${fl[@]}" | sed 's/ (\*)$//; s/ (proc-macro)$//' \
           | sort -u | grep -vc '^http-client-bench ' || true)
  crates_b=$(cargo tree -q --offline -e normal,build --prefix none "${fl[@]}" | sed 's/ (\*)$//; s/ (proc-macro)$//' \
           | sort -u | grep -vc '^http-client-bench ' || true)
  cp "$td/release/tiny" "$td/tiny.stripped"
  strip "$td/tiny.stripped"
  size=$(stat -c %s "$td/tiny.stripped")
  [ "$feat" = none ] && base=$size
  printf '| %s | %.1f (%s) | %s | %s | %.2f MiB | +%.2f MiB |\n' "$feat" "$med" "${runs% }" "$crates" "$crates_b" \
    "$(echo "$size/1048576" | bc -l)" "$(echo "($size-$base)/1048576" | bc -l)"
done
