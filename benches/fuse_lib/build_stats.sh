#!/usr/bin/env bash
# Compile time from clean (release, one bin per library) and dependency counts.
# Prints a markdown table. Usage: ./build_stats.sh [reps]   (default 3; median reported)
set -euo pipefail
cd "$(dirname "$0")"
REPS=${1:-3}
cargo fetch -q
printf '| library (feature) | release build from clean, s (median of %s; runs) | crates `-e normal` | crates `-e normal,build` | stripped bin |\n' "$REPS"
echo '|---|---|---|---|---|'
for feat in ${FEATS:-fbr fuser16 fuser18}; do
  td="target/stats-$feat"
  times=()
  for _ in $(seq "$REPS"); do
    rm -rf "$td"
    s=$(date +%s.%N)
    CARGO_TARGET_DIR="$td" cargo build -q --release --offline --features "$feat" --bin "$feat"
    e=$(date +%s.%N)
    times+=("$(echo "$e - $s" | bc)")
  done
  med=$(printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')
  count() {
    cargo tree -q --offline -e "$1" --prefix none --features "$feat" | sed 's/ (\*)$//; s/ (proc-macro)$//' \
      | sort -u | grep -vc '^fuse-lib-bench ' || true
  }
  cp "$td/release/$feat" "$td/bin.stripped" && strip "$td/bin.stripped"
  printf '| %s | %.1f (%s) | %s | %s | %.2f MiB |\n' "$feat" "$med" "$(printf '%.1f ' "${times[@]}")" \
    "$(count normal)" "$(count normal,build)" "$(echo "$(stat -c %s "$td/bin.stripped")/1048576" | bc -l)"
  rm -rf "$td"
done
