"""Regression: a decoder process forked after PyTorch used its OpenMP thread pool hung forever in
its first resize (GNU OpenMP is not fork-safe). Found when a second training run in one process
stalled in its pre-flight pool. Runs in a subprocess with a time limit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import make_dataset

SCRIPT = textwrap.dedent("""
    import sys, torch, imagefit
    from imagefit.data.audit import preflight
    torch.set_num_threads(2)
    x = torch.randn(1000, 1000)
    (x @ x).sum()  # starts the OpenMP pool in the parent
    result = preflight(imagefit.scan_folder(sys.argv[1]), image_size=96, workers=2)
    print(len(result.index))
""")


def test_forked_preflight_after_torch_work_does_not_hang(tmp_path: Path):
    data = make_dataset(tmp_path / "data", {"cat": 150, "dog": 150})  # above the pool threshold
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(data)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "300"
