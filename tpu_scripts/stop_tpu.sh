#!/usr/bin/env bash
# Stop training on every worker. A later train_tpu.sh with the same MODEL_DIR resumes
# from the newest checkpoint.
#   tpu_scripts/stop_tpu.sh --name=gtr [--dry-run]
set -euo pipefail
source "$(dirname "$0")/common.sh"
parse_common_flags "$@"
if [[ ${#EXTRA_ARGS[@]} -gt 0 ]]; then echo "stop_tpu.sh: unknown flag ${EXTRA_ARGS[0]}" >&2; exit 2; fi
on_workers all "pkill --full 'gtr-jax train' || true"
