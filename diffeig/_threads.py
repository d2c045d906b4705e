"""The sparse solve's thread count on a shared machine.

torch's CPU kernels run on an OpenMP pool whose idle threads spin before they sleep (GNU
OpenMP's default wait policy). Where other processes hold the cores, a region of 2
threads waits at each barrier for a thread that is not scheduled, and the sparse NCut,
thousands of short regions, ran slower at 2 threads than at 1 (224 px, 2 busy processes
on 2 cores: 3.15 s against 2.23 s, forward + backward; ``benchmarks/sparse_ncut.py
--load``, docs/ncut.md). The wait policy is read once, when torch loads OpenMP, so a
library cannot change it; the thread count it can. :func:`solve_threads` runs the solve
on as many threads as there are cores that no other process is running on now (at least
1, at most ``torch.get_num_threads()``), read from ``/proc`` (Linux; elsewhere, or with
``DIFFEIG_ADAPTIVE_THREADS=0``, the count is left as it is).
"""

from __future__ import annotations

import contextlib
import os
import time

import torch

__all__ = ["busy_cores", "free_cores", "solve_threads"]

# samples of the machine's running tasks, this far apart; the fewest counts (a process
# that ran for one sample only is not a load)
SAMPLES = 3
SAMPLE_GAP_S = 1e-3
# below this many stored weights a solve takes milliseconds, as long as the reads: left alone
MIN_ENTRIES = 100_000


def _own_running() -> int:
    """This process's threads in state R (running or runnable)."""
    own = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/stat") as fh:
                stat = fh.read()
        except OSError:  # the thread ended
            continue
        own += stat[stat.rindex(")") + 2] == "R"
    return own


def busy_cores() -> int | None:
    """Tasks of other processes running now (``/proc/loadavg``'s runnable count less
    this process's running threads), the fewest of :data:`SAMPLES` reads; None where
    ``/proc`` cannot be read."""
    counts = []
    try:
        for i in range(SAMPLES):
            if i:
                time.sleep(SAMPLE_GAP_S)
            with open("/proc/loadavg") as fh:
                running = int(fh.read().split()[3].split("/")[0])
            counts.append(max(0, running - _own_running()))
    except (OSError, ValueError, IndexError):
        return None
    return min(counts)


def free_cores() -> int | None:
    """Cores this process may use that no other process is running on now (None where
    unknown)."""
    busy = busy_cores()
    if busy is None:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(0, (cores or 1) - busy)


@contextlib.contextmanager
def solve_threads(entries: int):
    """Run the block, a solve over ``entries`` stored weights, on
    ``min(torch.get_num_threads(), free cores)`` threads (at least 1), then restore the
    count; solves under :data:`MIN_ENTRIES` keep the count."""
    n = torch.get_num_threads()
    use = n
    if n > 1 and entries >= MIN_ENTRIES and os.environ.get("DIFFEIG_ADAPTIVE_THREADS", "1") != "0":
        free = free_cores()
        if free is not None:
            use = max(1, min(n, free))
    if use == n:
        yield n
        return
    torch.set_num_threads(use)
    try:
        yield use
    finally:
        torch.set_num_threads(n)
