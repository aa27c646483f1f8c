#!/usr/bin/env bash
# Install this checkout of gtr_jax (its pinned dependencies, plus jax's TPU runtime) on
# every worker, and copy data sets from Cloud Storage to each worker's local disk.
#   tpu_scripts/setup_tpu.sh --name=gtr [--data=gs://bucket/msmarco=/data/msmarco ...] [--dry-run]
# The data loaders read local files; model directories may stay on gs://.
set -euo pipefail
source "$(dirname "$0")/common.sh"
parse_common_flags "$@"
COPIES=()
for arg in "${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}"; do
  case "$arg" in
    --data=*=*) COPIES+=("${arg#--data=}") ;;
    *) echo "setup_tpu.sh: unknown flag $arg (data copies are --data=gs://SRC=/LOCAL/DIR)" >&2; exit 2 ;;
  esac
done
REPO="$(cd "$(dirname "$0")/.." && pwd)"
ARCHIVE=/tmp/gtr_jax_source.tar.gz

# The committed tree of this checkout, so every worker runs exactly the same code.
run git -C "$REPO" archive --format=tar.gz --output="$ARCHIVE" HEAD
gcloud_location
run gcloud compute tpus tpu-vm scp "$ARCHIVE" "$TPU_NAME":gtr_jax_source.tar.gz "${LOCATION[@]}" --worker=all
on_workers all "rm -rf gtr_jax && mkdir gtr_jax && tar -xzf gtr_jax_source.tar.gz -C gtr_jax && cd gtr_jax && python3 -m venv .venv && .venv/bin/pip install --quiet '.[tpu]'"
for copy in "${COPIES[@]+"${COPIES[@]}"}"; do
  source_url="${copy%%=*}"
  local_dir="${copy#*=}"
  on_workers all "sudo mkdir -p '$local_dir' && sudo chown \$USER '$local_dir' && gcloud storage cp --recursive '$source_url/*' '$local_dir/'"
done
