#!/usr/bin/env bash
# Follow the training log of one worker (process 0 writes metrics and the progress bar).
#   tpu_scripts/logs_tpu.sh --name=gtr [--worker=0] [--dry-run]
set -euo pipefail
source "$(dirname "$0")/common.sh"
parse_common_flags "$@"
WORKER=0
for arg in "${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}"; do
  case "$arg" in
    --worker=*) WORKER="${arg#*=}" ;;
    *) echo "logs_tpu.sh: unknown flag $arg" >&2; exit 2 ;;
  esac
done
on_workers "$WORKER" "tail --follow=name --retry gtr_jax/train.log"
