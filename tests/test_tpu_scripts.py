"""Every Cloud TPU script in --dry-run: the exact commands it would run."""

import os
import pathlib
import shlex
import subprocess

import pytest

SCRIPTS = pathlib.Path(__file__).resolve().parent.parent / "tpu_scripts"
REPO = SCRIPTS.parent
SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "gtr", "--zone=europe-west4-a", "--project=proj"]
COMMON = ["--name=gtr", "--zone=europe-west4-a", "--project=proj", "--dry-run"]


def dry_run(script, *args):
    """The commands (as argv lists) the script prints under --dry-run."""
    env = {k: v for k, v in os.environ.items() if k not in ("TPU_NAME", "ZONE", "PROJECT")}
    result = subprocess.run([str(SCRIPTS / script), *args], capture_output=True, text=True, env=env, check=True)
    return [shlex.split(line) for line in result.stdout.splitlines()]


def test_every_script_is_strict_and_runnable():
    scripts = sorted(p.name for p in SCRIPTS.glob("*.sh") if p.name != "common.sh")
    assert scripts == ["create_tpu.sh", "delete_tpu.sh", "logs_tpu.sh", "setup_tpu.sh", "stop_tpu.sh", "train_tpu.sh"]
    for name in scripts:
        text = (SCRIPTS / name).read_text()
        assert "set -euo pipefail" in text and os.access(SCRIPTS / name, os.X_OK), name


def test_create():
    assert dry_run("create_tpu.sh", *COMMON, "--accelerator=v4-32", "--spot") == [[
        "gcloud", "compute", "tpus", "tpu-vm", "create", "gtr", "--zone=europe-west4-a", "--project=proj",
        "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--spot"]]


def test_setup_installs_the_committed_tree_and_copies_data():
    archive, scp, install, copy = dry_run("setup_tpu.sh", *COMMON, "--data=gs://bucket/msmarco=/data/msmarco")
    assert archive == ["git", "-C", str(REPO), "archive", "--format=tar.gz", "--output=/tmp/gtr_jax_source.tar.gz", "HEAD"]
    assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "/tmp/gtr_jax_source.tar.gz", "gtr:gtr_jax_source.tar.gz",
                   "--zone=europe-west4-a", "--project=proj", "--worker=all"]
    assert install[:-1] == [*SSH, "--worker=all"]
    assert install[-1] == ("--command=rm -rf gtr_jax && mkdir gtr_jax && tar -xzf gtr_jax_source.tar.gz -C gtr_jax && "
                           "cd gtr_jax && python3 -m venv .venv && .venv/bin/pip install --quiet '.[tpu]'")
    assert copy[-1] == ("--command=sudo mkdir -p '/data/msmarco' && sudo chown $USER '/data/msmarco' && "
                        "gcloud storage cp --recursive 'gs://bucket/msmarco/*' '/data/msmarco/'")


def test_train_runs_the_same_flags_on_every_worker():
    (command,) = dry_run("train_tpu.sh", *COMMON, "--", "--gin_file=runs/msmarco.gin", "--gin.MODEL_DIR=gs://b/run 1",
                         "--gin.T5Config.dtype='bfloat16'")
    assert command[:-1] == [*SSH, "--worker=all"]
    remote = command[-1].removeprefix("--command=")
    assert remote.startswith("cd gtr_jax && nohup .venv/bin/gtr-jax train --multihost_tpu ")
    assert remote.endswith(" > train.log 2>&1 < /dev/null &")
    # The remote shell gets each gtr-jax flag back intact.
    flags = remote.removeprefix("cd gtr_jax && nohup .venv/bin/gtr-jax train --multihost_tpu ").split(" > train.log")[0]
    assert shlex.split(flags) == ["--gin_file=runs/msmarco.gin", "--gin.MODEL_DIR=gs://b/run 1",
                                  "--gin.T5Config.dtype='bfloat16'"]


def test_logs_stop_delete():
    assert dry_run("logs_tpu.sh", *COMMON, "--worker=3") == [
        [*SSH, "--worker=3", "--command=tail --follow=name --retry gtr_jax/train.log"]]
    assert dry_run("stop_tpu.sh", *COMMON) == [[*SSH, "--worker=all", "--command=pkill --full 'gtr-jax train' || true"]]
    assert dry_run("delete_tpu.sh", *COMMON) == [
        ["gcloud", "compute", "tpus", "tpu-vm", "delete", "gtr", "--zone=europe-west4-a", "--project=proj", "--quiet"]]


@pytest.mark.parametrize("script,args,message", [
    ("create_tpu.sh", ["--acelerator=v4-8"], "unknown flag --acelerator=v4-8"),
    ("train_tpu.sh", ["--dry-run"], "give the gtr-jax train flags after --"),
    ("setup_tpu.sh", ["--data=gs://only-source"], "unknown flag --data=gs://only-source"),
])
def test_mistakes_exit_non_zero_with_a_message(script, args, message):
    result = subprocess.run([str(SCRIPTS / script), *args], capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr and not result.stdout
