"""Writes tests/data/kway_fixture.pt: scikit-learn's ``discretize`` (Yu & Shi's multiclass
spectral rounding) on the NCut eigenvectors of seeded graphs, the oracle of
``diffeig.ncut.kway``'s test. Run once where scikit-learn is installed (it is no
dependency of diffeig):

    pip install scikit-learn && python scripts/make_kway_fixture.py

Each case stores the eigenvectors (scipy's generalized ``eigh(D - W, D)``, the first m
columns), k, the random_state given to ``discretize``, the start row that random_state
draws (``RandomState(seed).randint(N)``, what ``kway(start=...)`` takes) and the labels.
"""

from pathlib import Path

import numpy as np
import sklearn
import torch
from scipy.linalg import eigh
from sklearn.cluster._spectral import discretize


def graph(seed: int, n_groups: int, size: int = 30, dim: int = 6) -> np.ndarray:
    """A Gaussian-kernel graph of ``n_groups`` noisy clusters of ``size`` points."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=2.5, size=(n_groups, dim))
    X = np.concatenate([c + rng.normal(size=(size, dim)) for c in centres])
    d2 = ((X[:, None] - X[None]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * np.median(d2)))


cases = []
for seed, n_groups, k in [(0, 3, 3), (1, 4, 4), (2, 5, 5), (3, 4, 3), (4, 3, 5), (5, 6, 6)]:
    W = graph(seed, n_groups)
    D = np.diag(W.sum(1))
    _, Z = eigh(D - W, D, subset_by_index=[0, k - 1])
    labels = discretize(Z.copy(), random_state=seed)
    start = int(np.random.RandomState(seed).randint(len(Z)))
    cases.append(
        {
            "Z": torch.from_numpy(Z),
            "k": k,
            "random_state": seed,
            "start": start,
            "labels": torch.from_numpy(labels),
        }
    )
    print(f"seed {seed}: N = {len(Z)}, k = {k}, segment sizes {np.bincount(labels).tolist()}")
out = Path(__file__).resolve().parents[1] / "tests" / "data" / "kway_fixture.pt"
torch.save({"cases": cases, "sklearn": sklearn.__version__}, out)
print(f"wrote {out} (scikit-learn {sklearn.__version__})")
