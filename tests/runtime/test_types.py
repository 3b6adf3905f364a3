"""The package type-checks clean: mypy over ``runtime/``, ``actors/`` and ``transport/`` with
the settings in pyproject.toml (``[tool.mypy]``), so that annotations (the messages, the frames,
the stores' operations) stay what the code does."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_mypy_finds_nothing():
    proc = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("Success: no issues found"), proc.stdout
