"""The entry points' OpenMP waiting (camvid.threads)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from camvid.threads import SPIN_COUNT, set_openmp_wait

REPO = Path(__file__).resolve().parents[1]


def test_short_spin_unless_the_user_chose():
    assert set_openmp_wait({}) == {"GOMP_SPINCOUNT": SPIN_COUNT}
    assert int(SPIN_COUNT) < 300_000  # shorter than libgomp's own default
    for own in ({"OMP_WAIT_POLICY": "PASSIVE"}, {"GOMP_SPINCOUNT": "0"}, {"OMP_WAIT_POLICY": "active"}):
        assert set_openmp_wait(dict(own)) == own


@pytest.mark.parametrize("entry", ["train", "sample", "evaluate"])
def test_entry_points_set_it_before_torch(entry):
    code = ("import runpy, sys, os; sys.argv = ['x', '--help']\n"
            f"mod = runpy.run_path({str(REPO / 'src' / (entry + '.py'))!r}, run_name='not_main')\n"
            "print(os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.split() == [SPIN_COUNT, "False"]
