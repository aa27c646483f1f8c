"""`make demo` end to end with a handful of steps: train, evaluate (vs random init and BM25), export."""

import json
import os
import pathlib
import subprocess

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_make_demo_trains_evaluates_and_exports(tmp_path):
    demo_dir = tmp_path / "demo"
    result = subprocess.run(
        # -o: the test suite's .venv is installed already; do not reinstall it.
        ["make", "-o", ".venv/.installed", "demo", f"DEMO_DIR={demo_dir}",
         "DEMO_FLAGS=--gin.TRAIN_STEPS=3 --gin.WARMUP_STEPS=1 --gin.BATCH_SIZE=16 --gin.train.progress=False"],
        cwd=REPO, capture_output=True, text=True, env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("demo_test, random init:") and "P@1" in line for line in lines), result.stdout
    assert any(line.startswith("demo_test, trained:") and "NDCG@10" in line for line in lines), result.stdout
    assert any(line.startswith("demo_test, BM25 (bm25s):") and "NDCG@10" in line for line in lines), result.stdout

    assert sorted(os.listdir(demo_dir / "model" / "checkpoints")) == ["checkpoint_3"]
    metrics = json.loads((demo_dir / "eval" / "metrics.json").read_text())
    assert metrics["step"] == 3 and metrics["results"]["demo_test"]["num_q"] > 200
    run = (demo_dir / "eval" / "demo_test.run").read_text().splitlines()
    assert run and all(len(line.split()) == 6 for line in run)
    modules = json.loads((demo_dir / "sentence_transformers" / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Router", "Dense", "Normalize"]
