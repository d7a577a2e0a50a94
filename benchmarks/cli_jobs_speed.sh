#!/usr/bin/env bash
# Speed-up of `soft-niggli canonicalize --jobs 2` over `--jobs 1` on this machine, written to
# benchmarks/results/cli_jobs_speed.md. From the repository root:
#
#     bash benchmarks/cli_jobs_speed.sh [DATA_DIR] [ROUNDS]
#
# Inputs: the 7140 MP-20 bi/ternary rows (DATA_DIR/mp_20_biternary/val.csv.gz, default ../shared/data),
# and the same rows four times over (28 560 rows, made in a scratch folder). The two settings alternate,
# ROUNDS times (default 3) per input; medians are reported, and the two outputs must be byte-identical.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-${SOFT_NIGGLI_DATA:-../shared/data}}
ROUNDS=${2:-3}
IN=$DATA/mp_20_biternary/val.csv.gz
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
(zcat "$IN"; for _ in 1 2 3; do zcat "$IN" | tail -n +2; done) | gzip -1 > "$TMP/x4.csv.gz"
OUT=benchmarks/results/cli_jobs_speed.md
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
rows=()
for input in "$IN" "$TMP/x4.csv.gz"; do
  : > "$TMP/t1"; : > "$TMP/t2"
  for _ in $(seq "$ROUNDS"); do
    for j in 1 2; do
      rm -f "$TMP/out$j.csv.gz"
      start=$(date +%s.%N)
      python -m soft_niggli.cli canonicalize "$input" "$TMP/out$j.csv.gz" --jobs $j --no-progress > /dev/null
      echo "$(date +%s.%N) - $start" | bc >> "$TMP/t$j"
    done
  done
  cmp <(zcat "$TMP/out1.csv.gz") <(zcat "$TMP/out2.csv.gz")  # the same bytes with either setting
  n=$(($(zcat "$input" | python -c "import csv, sys; csv.field_size_limit(1 << 30); print(sum(1 for _ in csv.reader(sys.stdin)))") - 1))
  m1=$(median < "$TMP/t1"); m2=$(median < "$TMP/t2")
  rows+=("| $n | $(printf '%.1f' "$m1") | $(printf '%.1f' "$m2") | $(echo "scale=2; $m1 / $m2" | bc) | $(paste -sd' ' "$TMP/t1" | xargs printf '%.1f ') / $(paste -sd' ' "$TMP/t2" | xargs printf '%.1f ') |")
done
{
  echo "# \`soft-niggli canonicalize --jobs\`: speed-up on this machine"
  echo
  echo "Command: \`bash benchmarks/cli_jobs_speed.sh $DATA $ROUNDS\`"
  echo
  echo "Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  echo "Rows: MP-20 bi/ternary (\`mp_20_biternary/val.csv.gz\`), once and four times over. Wall seconds, median of $ROUNDS alternating runs each; outputs byte-identical."
  echo
  echo "| rows | --jobs 1 (s) | --jobs 2 (s) | speed-up | runs, jobs 1 / jobs 2 |"
  echo "|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} > "$OUT"
cat "$OUT"
