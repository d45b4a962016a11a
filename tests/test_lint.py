"""Lint: ``ruff check`` (rules and line length from pyproject.toml) passes on the package, tests,
benchmarks and scripts."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["uniq_hub", "tests", "benchmarks", "scripts"]


def _ruff(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, input=stdin, capture_output=True,
                          text=True, timeout=120)


def test_ruff_check_passes():
    out = _ruff("check", "--no-cache", *PATHS)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]


def test_ruff_applies_the_project_rules():
    """The configuration is in force: an unused import, a long line and unsorted imports are flagged."""
    code = "import sys\nimport os\n\nX = '" + "x" * 130 + "'\n"
    out = _ruff("check", "--no-cache", "--output-format", "concise", "--stdin-filename", "uniq_hub/example.py",
                stdin=code)
    assert out.returncode == 1
    for rule in ("F401", "E501", "I001"):
        assert rule in out.stdout, out.stdout
