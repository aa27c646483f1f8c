#!/usr/bin/env bash
# Start `gtr-jax train` on every worker with the same gin flags; output goes to
# ~/gtr_jax/train.log on each worker (follow it with logs_tpu.sh).
#   tpu_scripts/train_tpu.sh --name=gtr [--dry-run] -- --gin_file=runs/msmarco.gin --gin_file=runs/tpu.gin \
#     --gin_file=models/t5_1_1_base.gin --gin_file=architectures/ade_spl.gin \
#     --gin.MODEL_DIR=gs://bucket/runs/msmarco --gin.MSMARCO_DIR=/data/msmarco --gin.INIT_CHECKPOINT=gs://bucket/init
set -euo pipefail
source "$(dirname "$0")/common.sh"
TRAIN_ARGS=()
while [[ $# -gt 0 ]]; do
  if [[ "$1" == "--" ]]; then shift; TRAIN_ARGS=("$@"); break; fi
  parse_common_flags "$1"
  shift
done
if [[ ${#EXTRA_ARGS[@]} -gt 0 ]]; then
  echo "train_tpu.sh: unknown flag ${EXTRA_ARGS[0]} (gtr-jax flags go after --)" >&2; exit 2
fi
if [[ ${#TRAIN_ARGS[@]} -eq 0 ]]; then
  echo "train_tpu.sh: give the gtr-jax train flags after --" >&2; exit 2
fi
QUOTED="$(printf '%q ' "${TRAIN_ARGS[@]}")"
on_workers all "cd gtr_jax && nohup .venv/bin/gtr-jax train --multihost_tpu ${QUOTED% } > train.log 2>&1 < /dev/null &"
