#!/usr/bin/env bash
# The long generative runs behind benchmarks/results/generative/learning_curves/: the budget the
# 4000-step comparison (generative_matrix.sh) is too short for. Each run records its learning curve
# (match rate, RMSE and lattice error on held-out crystals every --eval-every epochs) beside the final
# metrics. One thread per run, two at a time on a 2-core machine; from the repository root:
#
#     bash benchmarks/generative_curves.sh
#
# Budgets: perov_5 20000 steps of batch 256 (about 1670 epochs, 26-34 minutes per run on a shared
# core); mp_20_biternary 16000 steps of batch 64 (about 180 epochs, 57 minutes); and the recipe with
# the usual extras (EMA of the weights, cosine learning rate) on perov_5 at 10000 steps (15-17 minutes),
# written to benchmarks/results/generative/recipe/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/generative/learning_curves}
COMMON="--align-prior --threads 1 --no-progress --ode-steps 10,50,200 --strategies mse --bases niggli --out $OUT"
run() { echo "$(date +%T) $*"; python -m benchmarks.generative "$@" $COMMON > /dev/null; }
for seed in 0 1; do
  run --dataset perov_5 --seeds $seed, --coupling independent --batch-size 256 --eval-every 100 --curve-size 200 \
      --epochs 2000 --max-steps 20000 &
  run --dataset perov_5 --seeds $seed, --coupling automorphisms:random --batch-size 256 --eval-every 100 \
      --curve-size 200 --epochs 2000 --max-steps 20000
  wait
done
run --dataset mp_20_biternary --seeds 0, --coupling independent --batch-size 64 --limit ,300 --eval-every 15 \
    --epochs 1000 --max-steps 16000
for c in independent automorphisms:random; do
  OUT=benchmarks/results/generative/recipe
  python -m benchmarks.generative --dataset perov_5 --seeds 0, --strategies mse --bases niggli --coupling $c \
      --batch-size 256 --eval-every 100 --curve-size 200 --ema 0.999 --lr-schedule cosine --align-prior --threads 1 \
      --no-progress --epochs 2000 --max-steps 10000 --ode-steps 10,50,200 --out $OUT > /dev/null &
done
wait
# One trained model sampled several ways (plain Euler, a jump at t = 0.9, anti-annealing 3 and 10):
# benchmarks/results/generative/sampler_study.md, at 4000 and at 20000 steps (18-32 minutes per run).
for args in "independent --seed 0" "automorphisms:random --seed 0" "independent --seed 0 --max-steps 20000" \
            "independent --seed 1 --max-steps 20000" "automorphisms:random --seed 0 --max-steps 20000" \
            "automorphisms:random --seed 1 --max-steps 20000" "independent --seed 2 --max-steps 20000" \
            "automorphisms:random --seed 2 --max-steps 20000"; do
  python -m benchmarks.sampler_study --dataset perov_5 --coupling $args --out benchmarks/results/generative > /dev/null
done
