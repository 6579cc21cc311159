"""Benchmarks stay out of the default ``pytest`` run (and CI's), and say so: a real pytest run, in a process of
its own, of a small test file with ducc's own test configuration (``tests/conftest.py``) loaded as a plugin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = '''
import pytest

@pytest.mark.bench
def test_timed():
    pass

def test_behaviour():
    pass
'''

WAYS = {  # id: extra arguments, extra environment, whether the benchmark runs
    "default": ([], {}, False),
    "--bench": (["--bench"], {}, True),
    "DUCC_BENCH=1": ([], {"DUCC_BENCH": "1"}, True),
    "DUCC_BENCH=0": ([], {"DUCC_BENCH": "0"}, False),
}


@pytest.mark.parametrize("args,env,runs", list(WAYS.values()), ids=list(WAYS))
def test_a_benchmark_runs_only_when_asked_for_and_its_skip_says_how(tmp_path, args, env, runs):
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    bench: a timing benchmark\n")
    (tmp_path / "test_sample.py").write_text(TESTS)
    inherited = {k: v for k, v in os.environ.items() if k != "DUCC_BENCH"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-rs",
                           "-q", *args], cwd=tmp_path, env={**inherited, "PYTHONPATH": str(REPO), **env},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    if runs:
        assert "2 passed" in done.stdout and "skipped" not in done.stdout, done.stdout
    else:
        assert "1 passed, 1 skipped" in done.stdout, done.stdout
        assert "test_sample.py:4: a timing benchmark: run with --bench or DUCC_BENCH=1" in done.stdout, done.stdout
