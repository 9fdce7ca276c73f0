"""``GPU_CHECK_DRY=1 tools/gpu_check.sh`` (``make gpu-check``) starts on a machine without a GPU: it collects the
CUDA tests and builds the bench commands (docs/GPU_CHECK.md); and the wheels folder it installs from is ignored."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.utils import ROOT


def test_gpu_check_dry_run_collects_the_cuda_tests_and_builds_the_commands(tmp_path):
    env = {**os.environ, "GPU_CHECK_DRY": "1", "PYTHON": sys.executable, "OUT": str(tmp_path)}
    res = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh")], capture_output=True, text=True,
                         timeout=300, env=env)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    n = int(out.split(" CUDA tests collected")[0].rsplit("gpu_check: ", 1)[1])
    assert n >= 10, out
    assert "-m pytest -m cuda" in out and "tests/test_cuda.py::test_ddp_with_one_nccl_rank_trains" in out
    for tag in ("--precision 32 --tag fp32", "--precision bf16 --tag bf16",
                "--extra trainer.channels_last=true,trainer.compile=true --tag bf16-cl-compile"):
        assert "-m gantrain.tools.bench --device cuda --cases dcgan-mnist,dcgan-celeba64,stylegan-64" in out and tag in out
    assert "all steps passed (dry run" in out
    assert (tmp_path / "gpu_check.log").read_text() == res.stdout  # the log lands in $OUT


def test_the_wheels_folder_is_git_ignored():
    assert "/.whl/" in (ROOT / ".gitignore").read_text().splitlines()
