"""Writes tests/data/rbf_fixture.pt: scikit-learn's rbf_kernel and kneighbors_graph on seeded
points, the oracle of diffeig.ncut.gaussian_affinity's tests. Run once where scikit-learn
is installed (it is no dependency of diffeig):

    pip install scikit-learn && python scripts/make_rbf_fixture.py
"""

from pathlib import Path

import numpy as np
import sklearn
import torch
from sklearn.metrics.pairwise import rbf_kernel
from sklearn.neighbors import kneighbors_graph

rng = np.random.default_rng(0)
X = rng.normal(size=(40, 3))
cases = []
for sigma in (0.5, 1.0, 3.0):
    cases.append({"sigma": sigma, "W": torch.from_numpy(rbf_kernel(X, gamma=1 / sigma**2))})
# kNN graph (k neighbours besides the point itself), symmetrized by union
knn = {}
for k in (3, 8):
    A = kneighbors_graph(X, k, mode="connectivity", include_self=False).toarray()
    knn[k] = torch.from_numpy(np.maximum(A, A.T).astype(bool))
out = Path(__file__).resolve().parents[1] / "tests" / "data" / "rbf_fixture.pt"
payload = {"X": torch.from_numpy(X), "rbf": cases, "knn": knn, "sklearn": sklearn.__version__}
torch.save(payload, out)
print(f"wrote {out} (scikit-learn {sklearn.__version__})")
