#!/usr/bin/env bash
# The generative comparison behind benchmarks/results/generative/generative_<dataset>.md, as run on a
# 2-core CPU machine: every run is one thread, at most two runs at a time, each writing into the
# dataset's JSON under a lock. Runs already in a dataset's JSON (with this recipe) are skipped, so the
# script resumes. From the repository root:
#
#     bash benchmarks/generative_matrix.sh            # everything below, most important first
#     bash benchmarks/generative_matrix.sh --list     # print the commands still to run
#
# Budgets (optimiser steps; the model is benchmarks.harness.flow_model.FlowNet, hidden 96, 3 layers, 235k
# parameters; the prior's rotation aligned to the label):
#   perov_5          4000 steps of batch 256; held out: all 757 (the 20% of val.csv.gz not trained on)
#   carbon_24        4000 steps of batch 64;  held out: the first 300 of 406
#   mp_20_biternary  4000 steps of batch 64;  held out: the first 300 of 1428
# On perov_5 every reduced form of a (cubic) label is an automorphism, so coupling "reduced-forms" is
# coupling "automorphisms" (identical runs, checked on seed 0) and runs for seed 0 only.
# Couplings: "automorphisms" breaks ties between equally distant forms by the prior's coordinates
# (ties="coordinates"), "automorphisms:random" draws among them (ties="random", the library's default).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/generative}
COMMON="--align-prior --threads 1 --no-progress --epochs 1000 --max-steps 4000 --ode-steps 10,50,200 --out $OUT"
declare -A SETUP=(
  [perov_5]="--batch-size 256"
  [carbon_24]="--batch-size 64 --limit ,300"
  [mp_20_biternary]="--batch-size 64 --limit ,300"
)
commands=()
add() {  # dataset seed strategy basis coupling [extra arguments: learning curves]
  local extra="${6:-}"
  local args="--dataset $1 --seeds $2, --strategies $3 --bases $4 --coupling $5 ${SETUP[$1]} $extra $COMMON"
  # Already in the dataset's JSON with this recipe too (a run of another recipe written to $OUT is a row of
  # its own, not this run; benchmarks.generative.has_runs)?
  if [[ -f "$OUT/generative_$1.json" ]] && python -c 'import shlex, sys
from benchmarks.generative import has_runs
sys.exit(0 if has_runs(shlex.split(sys.argv[1])) else 1)' "$args"; then return; fi
  # Running now (started by an earlier invocation)?
  if pgrep -f -- "--dataset $1 --seeds $2, --strategies $3 --bases $4 --coupling $5 " > /dev/null; then return; fi
  commands+=("python -m benchmarks.generative $args")
}
# Seed 0 everywhere (with learning curves: match rate on 100 held-out crystals every few epochs).
for c in independent automorphisms reduced-forms; do add perov_5 0 mse niggli $c "--eval-every 40"; done
for c in independent automorphisms; do add carbon_24 0 mse niggli $c "--eval-every 20"; done
for c in independent automorphisms reduced-forms; do add mp_20_biternary 0 mse niggli $c "--eval-every 6"; done
add carbon_24 0 mse niggli reduced-forms
# Random ties, then more seeds on perov_5, labels in random bases with the coupling, softmin as the x1-loss.
for seed in 0 1 2; do add perov_5 $seed mse niggli automorphisms:random; done
add mp_20_biternary 1 mse niggli independent
for seed in 0 1; do add mp_20_biternary $seed mse niggli automorphisms:random; done
add carbon_24 0 mse niggli automorphisms:random
add perov_5 0 mse random automorphisms:random
for seed in 1 2; do for c in independent automorphisms; do add perov_5 $seed mse niggli $c; done; done
add perov_5 0 mse random automorphisms
add perov_5 0 softmin niggli independent
add perov_5 1 softmin niggli independent
# A third seed on carbon_24 for the main comparison, the x1-losses on perov_5 to 3 seeds, a second seed
# on mp_20 and carbon_24 for the other couplings, then a third on carbon_24.
add carbon_24 2 mse niggli independent
add carbon_24 2 mse niggli automorphisms:random
add perov_5 0 reduced-forms niggli independent
add perov_5 0 proxy niggli independent
for seed in 1 2; do add perov_5 $seed reduced-forms niggli independent; add perov_5 $seed proxy niggli independent; done
add perov_5 2 softmin niggli independent
for c in automorphisms reduced-forms; do add mp_20_biternary 1 mse niggli $c; done
for c in automorphisms reduced-forms; do add carbon_24 1 mse niggli $c; done
for c in automorphisms reduced-forms; do add carbon_24 2 mse niggli $c; done
# Labels in random bases with the coupling, and the x1-losses, on carbon_24 and mp_20 (seed 0 first).
add carbon_24 0 mse random automorphisms:random
add mp_20_biternary 0 mse random automorphisms:random
for s in softmin proxy reduced-forms; do add carbon_24 0 $s niggli independent; done
add mp_20_biternary 0 softmin niggli independent
add carbon_24 1 mse random automorphisms:random
add mp_20_biternary 0 proxy niggli independent
add carbon_24 2 mse random automorphisms:random
add mp_20_biternary 0 reduced-forms niggli independent
add mp_20_biternary 1 mse random automorphisms:random
for seed in 1 2; do for s in softmin proxy reduced-forms; do add carbon_24 $seed $s niggli independent; done; done
for s in softmin proxy reduced-forms; do add mp_20_biternary 1 $s niggli independent; done
for seed in 1 2; do add perov_5 $seed mse random automorphisms:random; done

if [[ "${1:-}" == "--list" ]]; then printf '%s\n' "${commands[@]}"; exit 0; fi
for cmd in "${commands[@]}"; do
  # At most two runs at a time on this machine, counting runs started elsewhere.
  while (( $(pgrep -fc "^[^ ]*python -m benchmarks\.(generative|sampler_study)") >= 2 )); do sleep 20; done
  echo "$(date +%T) $cmd"
  bash -c "$cmd > /dev/null" &
  sleep 5
done
wait

# The comparison page across datasets (every setting against independent pairing).
python -m benchmarks.generative_comparison
