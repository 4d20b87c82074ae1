"""camvid.allocator: freed large blocks are kept for the next ones; sampling and evaluation set it,
training does not, and ``CAMVID_CPU_ALLOCATOR`` chooses for any entry point."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from camvid import allocator
from conftest import load_benchmark

REPO = Path(__file__).resolve().parents[1]
GLIBC = allocator._libc() is not None
allocator_bench = load_benchmark("cpu_allocator")

# Page faults of five malloc/memset/free rounds of a 64 MiB block (16384 pages of 4 KiB), measured twice:
# glibc's default maps each such block afresh (about 5 x 16384 faults per measurement); kept blocks are
# faulted in once and then reused.
PROBE = textwrap.dedent("""
    import ctypes, resource, sys
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    def faults(n=64 << 20):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            p = libc.malloc(n)
            ctypes.memset(p, 1, n)
            libc.free(p)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    faults()
    print(faults())
""")


def _second_round_faults(prelude: str, env: dict | None = None) -> int:
    code = prelude + "\n" + PROBE
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}, cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]
    return int(res.stdout.strip().splitlines()[-1])


def test_bad_setting_is_a_clear_error():
    with pytest.raises(ValueError, match="CAMVID_CPU_ALLOCATOR='fast'"):
        allocator.choose_cpu_allocator("train", env={"CAMVID_CPU_ALLOCATOR": "fast"})
    with pytest.raises(ValueError, match="unknown entry point 'serve'"):
        allocator.choose_cpu_allocator("serve", env={})
    with pytest.raises(ValueError, match="max_block"):
        allocator.reuse_freed_memory(max_block=0)


def test_system_setting_changes_nothing():
    env = {"CAMVID_CPU_ALLOCATOR": "system"}
    assert allocator.choose_cpu_allocator("sample", env=env) == "system"
    assert env == {"CAMVID_CPU_ALLOCATOR": "system"}


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_freed_blocks_are_reused():
    default = _second_round_faults("")
    kept = _second_round_faults("from camvid.allocator import reuse_freed_memory\nassert reuse_freed_memory()")
    assert default > 4 * 16000  # every round maps its block afresh
    assert kept < 2000  # the block is faulted in once, in the first measurement


def test_default_applies_when_the_variable_is_unset(monkeypatch):
    monkeypatch.setitem(allocator.DEFAULTS, "train", "system")
    assert allocator.choose_cpu_allocator("train", env={}) == "system"
    assert allocator.choose_cpu_allocator("sample", env={"CAMVID_CPU_ALLOCATOR": "system"}) == "system"


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
@pytest.mark.parametrize("entry,keeps", [("train", False), ("sample", True), ("evaluate", True)])
def test_entry_points_choice_and_override(entry, keeps):
    """Sampling and evaluation keep freed blocks, training keeps glibc's defaults (its saved activations
    fragment the heap); CAMVID_CPU_ALLOCATOR overrides either way."""
    load = (f"import importlib.util\nspec = importlib.util.spec_from_file_location('entry', 'src/{entry}.py')\n"
            "spec.loader.exec_module(importlib.util.module_from_spec(spec))")
    faults = _second_round_faults(load)
    assert (faults < 2000) if keeps else (faults > 4 * 16000)
    assert _second_round_faults(load, {"CAMVID_CPU_ALLOCATOR": "system"}) > 4 * 16000
    assert _second_round_faults(load, {"CAMVID_CPU_ALLOCATOR": "reuse"}) < 2000


def test_allocator_benchmark_reports_every_setting():
    """benchmarks/cpu_allocator.py: one row per setting with time, faults and memory, and the ratio."""
    res = subprocess.run([sys.executable, "benchmarks/cpu_allocator.py", "--workloads", "demo", "--rounds", "1",
                          "--steps", "1", "--threads", "1"], capture_output=True, text=True, timeout=600, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in res.stdout.splitlines() if line.startswith("| demo")]
    assert [tuple(c.strip() for c in r[:3]) for r in rows] == [("demo", "fwdbwd", s) for s in allocator_bench.SETTINGS]
    applied = {"system": True, "reuse": GLIBC}
    for r in rows:
        if not applied[r[2].strip()]:  # the row says why
            assert "not applied" in r[9]
            continue
        wall, faults, peak = float(r[3]), float(r[6]), float(r[7])
        assert wall > 0 and faults >= 0 and peak > 0
    assert float(rows[0][9]) == 1.0  # system against itself
