"""`gtr-jax mine` in 2 processes x 4 devices writes the same file as in 1 process x 8, with either miner."""

import json
import os
import subprocess
import sys

import pytest

from retrieval_case import random_model_dir, write_demo_beir


def command(output, *flags):
    return [sys.executable, "-m", "gtr_jax", "mine", "--quiet", "--num_negatives=5", "--rank_range=2:20",
            "--query_chunk=7", f"--output={output}", *flags]


def env(devices):
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def summary_counts(path):
    summary = json.loads(open(str(path) + ".summary.json").read())
    return {k: v for k, v in summary.items() if k not in ("seconds", "passages_per_second", "peak_rss_gib", "output")}


@pytest.mark.parametrize("miner", ["bm25", "model"])
def test_two_processes_write_what_one_writes(tmp_path, miner):
    beir_dir = write_demo_beir(str(tmp_path / "beir"), num_queries=40, num_distractors=25)
    flags = [f"--beir_dir={beir_dir}", "--split=test", f"--miner={miner}", "--max_score_ratio=0.99"]
    if miner == "model":
        flags.append(f"--model_dir={random_model_dir(str(tmp_path / 'model'), seed=3)}")
    one = tmp_path / "one.jsonl"
    subprocess.run(command(one, *flags), env=env(8), check=True, capture_output=True)
    two = tmp_path / "two.jsonl"
    port = 20000 + (os.getpid() + (miner == "model")) % 20000
    processes = [
        subprocess.Popen(command(two, *flags, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                                 f"--process_id={i}"), env=env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for i in range(2)
    ]
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
    assert two.read_bytes() == one.read_bytes()
    assert summary_counts(two) == summary_counts(one)
    assert summary_counts(one)["rows"] == 49 and summary_counts(one)["negatives"] > 100
