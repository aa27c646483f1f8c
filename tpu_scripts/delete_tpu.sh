#!/usr/bin/env bash
# Delete the TPU VM or pod slice (model directories on gs:// are kept).
#   tpu_scripts/delete_tpu.sh --name=gtr [--dry-run]
set -euo pipefail
source "$(dirname "$0")/common.sh"
parse_common_flags "$@"
if [[ ${#EXTRA_ARGS[@]} -gt 0 ]]; then echo "delete_tpu.sh: unknown flag ${EXTRA_ARGS[0]}" >&2; exit 2; fi
gcloud_location
run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${LOCATION[@]}" --quiet
