"""The CPU training run's thread governor (camvid.threads.ThreadGovernor) with a scripted machine."""

import pytest

from camvid.threads import ThreadGovernor


class Machine:
    """A clock, this process's CPU clock and the load average, advanced by the test."""

    def __init__(self):
        self.wall = self.cpu = 0.0
        self.load = 0.0

    def run(self, seconds: float, own_cpu_per_s: float, others: float):
        self.wall += seconds
        self.cpu += seconds * own_cpu_per_s
        self.load = own_cpu_per_s + others  # a settled 1-minute average


def governor(machine, calls, monkeypatch, every=5):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    return ThreadGovernor(every=every, cores=2, threads=2, loadavg=lambda: machine.load,
                          clock=lambda: machine.wall, cpu_clock=lambda: machine.cpu, set_threads=calls.append)


def test_one_thread_while_other_jobs_need_the_cores_then_back(monkeypatch):
    m, calls = Machine(), []
    g = governor(m, calls, monkeypatch)
    m.run(10, 2.0, 0.0)
    assert g.step(0) == 2 and calls == []            # quiet: both threads
    m.run(10, 2.0, 2.0)
    assert g.step(3) == 2                            # checks only every 5 steps
    assert g.step(5) == 1 and calls == [1]           # two busy jobs arrive
    m.run(10, 1.0, 2.0)
    assert g.step(10) == 1                           # still there
    m.run(10, 1.0, 0.6)
    assert g.step(15) == 1                           # between the bounds: no flapping
    m.run(10, 1.0, 0.1)
    assert g.step(20) == 2 and calls == [1, 2]       # gone: back to both cores
    assert [c[:2] for c in g.changes] == [(5, 1), (20, 2)]


def test_own_threads_are_not_counted_as_load(monkeypatch):
    m, calls = Machine(), []
    g = governor(m, calls, monkeypatch)
    for step in range(0, 50, 5):
        m.run(10, 1.97, 0.0)   # our two threads alone keep the load near 2
        assert g.step(step) == 2
    assert calls == []


@pytest.mark.parametrize("env,cores", [({"OMP_NUM_THREADS": "2"}, 2), ({}, 1)])
def test_inactive_when_the_user_chose_or_one_core(monkeypatch, env, cores):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    m, calls = Machine(), []
    g = ThreadGovernor(every=1, cores=cores, threads=2, loadavg=lambda: 9.0, clock=lambda: m.wall,
                       cpu_clock=lambda: m.cpu, set_threads=calls.append)
    m.run(10, 1.0, 8.0)
    assert g.step(1) == 2 and calls == [] and not g.active
