"""Shared pieces of the benchmark scripts: inputs, the methods, timing, metadata, and the
fairness contract every comparison with another solver keeps (benchmarks/README.md,
"The fairness contract"): the same problem and stopping rule, one residual measured
after every solver (:func:`ncut_residual`), the same seeded random start and never one at
or near an eigenvector (:func:`seeded_vector`), the same warm-up and repeats with the
median for everyone (:func:`median_timing`), the same threads (:func:`thread_env`), and
the load average recorded (:func:`load_average`)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

import diffeig
from diffeig import _reference
from diffeig.baselines import sym_eigh_ncut_pinv
from diffeig.ncut import affinity
from diffeig.ncut._common import sign_flips

PAPER_TABLE3 = {  # supplement Table 3, A100 80GB, seconds
    ("Pseudo inverse", "ViT-S/16"): (0.6677, 4.8206, 5.4883),
    ("Pseudo inverse", "ViT-S/8"): (0.7616, 8.3074, 9.0690),
    ("Ours", "ViT-S/16"): (0.6677, 0.0011, 0.6688),
    ("Ours", "ViT-S/8"): (0.7616, 0.0013, 0.7629),
}


def synthetic_features(
    batch: int, side: int, channels: int = 384, *, seed: int = 0, dtype=torch.float32, device="cpu"
) -> torch.Tensor:
    """Key-like token features ``(batch, side*side, channels)`` with spatial structure.

    Each image has an elliptical foreground at a random place and size; tokens are a
    foreground or background prototype plus spatially smooth noise, so the affinity has
    the block structure (and the near-ties) of real last-layer keys.
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, side), torch.linspace(0, 1, side), indexing="ij")
    centre = 0.25 + 0.5 * torch.rand(batch, 2, generator=g)
    radius = 0.15 + 0.2 * torch.rand(batch, 2, generator=g)
    fg = (
        ((yy - centre[:, 0, None, None]) / radius[:, 0, None, None]) ** 2
        + ((xx - centre[:, 1, None, None]) / radius[:, 1, None, None]) ** 2
    ) < 1
    protos = torch.randn(batch, 2, channels, generator=g)
    feats = torch.where(fg[..., None], protos[:, None, None, 0], protos[:, None, None, 1])
    noise = torch.randn(batch, channels, side, side, generator=g)
    noise = torch.nn.functional.avg_pool2d(noise, 3, stride=1, padding=1, count_include_pad=False)
    feats = feats + 1.5 * noise.permute(0, 2, 3, 1)
    feats = feats.reshape(batch, side * side, channels)
    return torch.nn.functional.normalize(feats, dim=-1).to(device=device, dtype=dtype)


def make_affinity(features: torch.Tensor) -> torch.Tensor:
    """The training graph: cosine similarity, tau = 0, eps = 1e-6."""
    with torch.no_grad():
        return affinity(features, tau=0.0, eps=1e-6, mode="weighted")


def torch_autograd_ncut(W: torch.Tensor, k: int = 2, *, laplacian: str = "ncut"):
    """NCut through torch.linalg.eigh's own backward (the full O(N^3) formula)."""
    normalized = laplacian == "ncut"
    L, d = _reference.laplacian(W, normalized)
    lam, V = torch.linalg.eigh(L)
    Z = V[..., :k] * d.rsqrt().unsqueeze(-1) if normalized else V[..., :k]
    # The same sign rule as the other two methods, so that the losses agree.
    return lam[..., :k], Z * sign_flips(Z.detach(), "max")


def lobpcg_ncut(W: torch.Tensor, k: int = 2, *, laplacian: str = "ncut"):
    """Ours with the iterative partial forward (LOBPCG) and shifted-solve backward."""
    return diffeig.sym_eigh_ncut(W, k, laplacian=laplacian, method="lobpcg")


def strongest_pinv_ncut(W: torch.Tensor, k: int = 2, *, laplacian: str = "ncut"):
    """The pseudo-inverse backward at its strongest: eigh-based (``hermitian=True``) and
    only for the eigenvectors the loss uses (z2 here, not the trivial vector)."""
    return sym_eigh_ncut_pinv(W, k, laplacian=laplacian, hermitian=True, used_only=True)


# Table 3's rows. "Pseudo-inverse" is the paper's variant (what its Table 3 measures: an
# SVD pseudo-inverse for every returned eigenvector); "Pseudo-inverse, strongest" is the
# fairest form of the same formula.
PINV_METHODS = ("Pseudo-inverse", "Pseudo-inverse, strongest")
METHODS: dict[str, Callable] = {
    "Pseudo-inverse": sym_eigh_ncut_pinv,
    "Pseudo-inverse, strongest": strongest_pinv_ncut,
    "Ours": diffeig.sym_eigh_ncut,
    "torch.linalg.eigh autograd": torch_autograd_ncut,
    "Ours, LOBPCG forward": lobpcg_ncut,
}


def mask_loss(Z: torch.Tensor) -> torch.Tensor:
    """The training loss's shape: a sigmoid mask of z2 (temperature 0.05)."""
    return torch.sigmoid(Z[..., 1] / 0.05).square().mean()


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def run_once(method: Callable, W: torch.Tensor, laplacian: str):
    """One forward and one backward, timed separately. Returns (fwd_s, bwd_s, grad)."""
    Wr = W.detach().clone().requires_grad_()
    sync(W.device)
    t0 = time.perf_counter()
    _, Z = method(Wr, 2, laplacian=laplacian)
    sync(W.device)
    t1 = time.perf_counter()
    loss = mask_loss(Z)
    sync(W.device)
    t2 = time.perf_counter()
    loss.backward()
    sync(W.device)
    t3 = time.perf_counter()
    return t1 - t0, t3 - t2, Wr.grad


def ncut_residual(M, d, lam: float, z) -> float:
    """``||(D - W) z - l D z|| / ||D z||`` for a scipy sparse (or dense) ``W`` = ``M`` with
    degrees ``d`` and a pair ``(l, z)`` of the normalized cut: the one residual the tables
    report for every solver, whatever its own stopping test measures."""
    import numpy as np

    z = np.asarray(z, dtype=np.float64).ravel()
    Dz = d * z
    r = Dz - M @ z - lam * Dz
    return float(np.linalg.norm(r) / max(np.linalg.norm(Dz), np.finfo(np.float64).tiny))


def seeded_vector(n: int, columns: int = 0, seed: int = 0):
    """The random start every Krylov solver of a comparison gets: standard normal, from
    one seed (``(n,)``, or ``(n, columns)``); never at or near an eigenvector."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.standard_normal(n) if columns == 0 else rng.standard_normal((n, columns))


def thread_env(threads: int) -> dict:
    """The environment of a child process that runs a solver on ``threads`` threads: the
    same for every solver (OpenMP for torch, and the BLAS libraries scipy may use)."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env["DIFFEIG_BENCH_THREADS"] = str(threads)
    return env


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (other processes on the machine)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def median_timing(fn: Callable, *, warmup: int, repeats: int):
    """``fn()`` run ``warmup`` times untimed, then ``repeats`` times timed: ``(summary,
    last output)``; every solver of a comparison is timed by this, with the same counts."""
    for _ in range(warmup):
        fn()
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return summarize(times), out


def summarize(samples: list[float]) -> dict:
    samples = sorted(samples)
    q = statistics.quantiles(samples, n=4) if len(samples) >= 2 else [samples[0]] * 3
    return {
        "median": statistics.median(samples),
        "min": samples[0],
        "max": samples[-1],
        "iqr": q[2] - q[0],
        "n": len(samples),
        "samples": samples,
    }


def measure_bandwidth(device="cpu", mbytes: int = 256) -> float:
    """Sustained read+write bandwidth (GB/s) of a large copy: the memory roofline."""
    x = torch.empty(mbytes * 2**20 // 4, dtype=torch.float32, device=device).fill_(1.0)
    y = torch.empty_like(x)
    best = float("inf")
    for _ in range(5):
        sync(device)
        t = time.perf_counter()
        y.copy_(x)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * x.numel() * 4 / best / 1e9


def measure_fresh_write(nbytes: int, device="cpu") -> float:
    """Seconds to allocate and fill a new tensor of ``nbytes``: on CPU this includes the
    page faults of a fresh allocation, which every backward pays for its dL/dW."""
    best = float("inf")
    for _ in range(5):
        sync(device)
        t = time.perf_counter()
        torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def git_sha() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.check_output(
            ["git", "rev-parse", "HEAD"], cwd=here, stderr=subprocess.DEVNULL, text=True
        ).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def metadata(device) -> dict:
    dev = torch.device(device)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "torch": torch.__version__,
        "diffeig": diffeig.__version__,
        "native_ops": diffeig.has_ops(),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        # other processes' load when the run started: a loaded machine slows every solver,
        # multi-threaded ones most (benchmarks/README.md, "Threads and load")
        "load_average": load_average(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        # how this file was made, for the README's "produced by" lines (benchmarks/report.py)
        "command": shlex.join(["python", os.path.relpath(sys.argv[0])] + sys.argv[1:]),
        # the allocator decides whether a large new tensor page-faults (see README)
        "allocator_env": {
            k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "LD_PRELOAD"
        },
    }


def write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(payload, fh, indent=2)
    os.replace(tmp, path)
