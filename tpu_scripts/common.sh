# Shared flags and the command runner of the Cloud TPU scripts; sourced, not run.
#
# Flags (each also readable from the environment variable in brackets):
#   --name=NAME            TPU VM or pod slice name            [TPU_NAME, default gtr-jax]
#   --zone=ZONE            Cloud zone                          [ZONE, default us-central2-b]
#   --project=PROJECT      Cloud project (default: gcloud's)   [PROJECT]
#   --dry-run              print the commands instead of running them
# Any other argument is left in EXTRA_ARGS for the script.

TPU_NAME="${TPU_NAME:-gtr-jax}"
ZONE="${ZONE:-us-central2-b}"
PROJECT="${PROJECT:-}"
DRY_RUN=0
EXTRA_ARGS=()

parse_common_flags() {
  for arg in "$@"; do
    case "$arg" in
      --name=*) TPU_NAME="${arg#*=}" ;;
      --zone=*) ZONE="${arg#*=}" ;;
      --project=*) PROJECT="${arg#*=}" ;;
      --dry-run) DRY_RUN=1 ;;
      *) EXTRA_ARGS+=("$arg") ;;
    esac
  done
}

# The flags every gcloud TPU command takes.
gcloud_location() {
  LOCATION=(--zone="$ZONE")
  if [[ -n "$PROJECT" ]]; then LOCATION+=(--project="$PROJECT"); fi
}

# One argument as the shell reads it back: bare if safe, else in single quotes.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Run a command, or print it (one line, copy-pastable) under --dry-run.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    local line="" arg
    for arg in "$@"; do line+="$(quote "$arg") "; done
    echo "${line% }"
  else
    "$@"
  fi
}

# Run a shell command on TPU workers (all by default) over gcloud ssh.
on_workers() {
  local worker="$1"; shift
  gcloud_location
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${LOCATION[@]}" --worker="$worker" --command="$*"
}
