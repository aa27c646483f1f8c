#!/usr/bin/env bash
# Create a TPU VM or pod slice.
#   tpu_scripts/create_tpu.sh --name=gtr --zone=us-central2-b --accelerator=v4-32 [--spot] [--dry-run]
# Flags: those of common.sh, --accelerator=TYPE (default v4-8), --runtime=VERSION
# (default tpu-ubuntu2204-base), --spot.
set -euo pipefail
source "$(dirname "$0")/common.sh"
parse_common_flags "$@"
ACCELERATOR=v4-8
RUNTIME=tpu-ubuntu2204-base
SPOT=()
for arg in "${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}"; do
  case "$arg" in
    --accelerator=*) ACCELERATOR="${arg#*=}" ;;
    --runtime=*) RUNTIME="${arg#*=}" ;;
    --spot) SPOT=(--spot) ;;
    *) echo "create_tpu.sh: unknown flag $arg" >&2; exit 2 ;;
  esac
done
gcloud_location
run gcloud compute tpus tpu-vm create "$TPU_NAME" "${LOCATION[@]}" --accelerator-type="$ACCELERATOR" \
  --version="$RUNTIME" "${SPOT[@]+"${SPOT[@]}"}"
