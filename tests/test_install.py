"""A non-editable install (what Cloud TPU workers get from `pip install '.[tpu]'`) finds the
shipped gin files and the task registrations from any directory."""

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_a_built_wheel_trains_from_outside_the_checkout(tmp_path):
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    # The dependencies are this environment's; only gtr_jax itself comes from the wheel.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    f"--wheel-dir={wheels}", str(REPO)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = wheels.glob("gtr_jax-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", f"--target={site}", str(wheel)],
                   check=True, capture_output=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    # PYTHONPATH puts the installed copy ahead of this checkout's editable install.
    env = {**os.environ, "PYTHONPATH": str(site), "JAX_PLATFORMS": "cpu"}
    where = subprocess.run([sys.executable, "-c", "import gtr_jax, tasks; from gtr_jax.cli import gin_flags; "
                            "print(gtr_jax.__file__, tasks.__file__, gin_flags.GIN_DIR)"],
                           env=env, cwd=outside, check=True, capture_output=True, text=True).stdout.split()
    assert all(path.startswith(str(site)) for path in where), where
    result = subprocess.run([sys.executable, "-m", "gtr_jax", "train", "--gin_file=runs/demo_cpu.gin",
                             f"--gin.MODEL_DIR={tmp_path / 'model'}", "--gin.train.dry_run=True"],
                            env=env, cwd=outside, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "dry run: ade_spl model" in result.stdout
