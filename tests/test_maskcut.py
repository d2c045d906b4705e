"""MaskCut (diffeig.dncut.maskcut) against CutLER's own maskcut_forward, and k-way segments
(diffeig.ncut.kway) against scikit-learn's discretize: fixtures made by
scripts/make_maskcut_fixture.py and scripts/make_kway_fixture.py."""

from pathlib import Path

import numpy as np
import pytest
import torch

import diffeig
from diffeig.dncut import maskcut
from diffeig.dncut.eval.maskcut import binary_graph, foreground, keep, similar

DATA = Path(__file__).parent / "data"
# A cut whose Fiedler value ties the next: any vector of a subspace is the answer.
TIED = 1e-6


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return (a & b).sum().item() / union if union else 1.0


def fixture():
    return torch.load(DATA / "maskcut_fixture.pt")["records"]


@pytest.mark.parametrize("method", [None, "dense"])
def test_maskcut_matches_cutler(method):
    """Every fixture image's masks are CutLER's (same number of objects, IoU >= 0.99 each).

    CutLER's flip rule reads the sign LAPACK gives its eigenvector where three corners
    fall on one side: the fixture has its masks as run and with the sign diffeig uses
    (largest |z| positive); ours are the latter everywhere, and the former wherever the
    two agree."""
    compared = agreed = 0
    for r in fixture():
        if min(r["gaps"]) < TIED:
            continue
        side = r["side"]
        out = maskcut(r["features"].float(), (side, side), method=method)
        assert out.masks.shape == (3, side, side)
        count = [bool(m.any()) for m in out.masks]
        assert count == [bool(m.any()) for m in r["masks_signed"]], r["name"]
        for ours, theirs in zip(out.masks, r["masks_signed"]):
            assert iou(ours, theirs) >= 0.99, r["name"]
        if torch.equal(r["masks"], r["masks_signed"]):
            agreed += 1
            assert all(iou(a, b) >= 0.99 for a, b in zip(out.masks, r["masks"])), r["name"]
        compared += 1
    assert compared >= 12 and agreed >= 4


def test_maskcut_batch_equals_single():
    records = [r for r in fixture() if r["side"] == 20][:4]
    feats = torch.stack([r["features"].float() for r in records])
    batched = maskcut(feats, (20, 20))
    for b, r in enumerate(records):
        single = maskcut(r["features"].float(), (20, 20))
        assert torch.equal(batched.masks[b], single.masks)
        torch.testing.assert_close(batched.eigenvalues[b], single.eigenvalues, rtol=1e-6, atol=0)


def test_maskcut_masks_are_disjoint_and_cut_in_order():
    r = next(r for r in fixture() if r["name"] == "quokka")
    out = maskcut(r["features"].float(), (30, 30), max_objects=4)
    assert out.masks.shape == (4, 30, 30) and out.eigenvalues.shape == (4,)
    assert int(out.masks.sum(0).max()) <= 1  # each token in one mask at most
    # the first cut's mask is its eigenvector's foreground component, as foreground() says
    first = foreground(out.eigenvectors[0].flatten().numpy(), (30, 30))
    assert np.array_equal(out.masks[0].numpy(), first)


def test_binary_graph_masks_taken_tokens():
    f = torch.randn(2, 12, 5, dtype=torch.float64)
    taken = torch.zeros(2, 12, dtype=torch.bool)
    taken[0, [1, 4]] = True
    W = binary_graph(similar(f, 0.2), taken, 0.2, 1e-5)
    # the same graph as zeroing their features (CutLER's get_masked_affinity_matrix)
    zeroed = f * ~taken[..., None]
    expect = diffeig.ncut.affinity(zeroed, tau=0.2, eps=1e-5, mode="binary")
    torch.testing.assert_close(W, expect, rtol=0, atol=0)
    W_neg = binary_graph(similar(f, -0.5), taken, -0.5, 1e-5)
    expect = diffeig.ncut.affinity(zeroed, tau=-0.5, eps=1e-5, mode="binary")
    torch.testing.assert_close(W_neg, expect, rtol=0, atol=0)


def test_flip_rule_and_drop_rule():
    # z > mean on three corners: that side is background, whatever |z| says
    z = np.full((4, 4), 1.0)
    z[1:3, 1:3] = -3.0
    fg = foreground(z.flatten(), (4, 4))
    assert fg.sum() == 4 and fg.reshape(4, 4)[1:3, 1:3].all()
    # otherwise the side of the largest |z|, and only the seed's 4-connected component
    z = np.zeros((5, 5))
    z[0, 1], z[4, 3], z[4, 4] = 5.0, 2.0, 2.0
    fg = foreground(z.flatten(), (5, 5)).reshape(5, 5)
    assert fg[0, 1] and not fg[4, 3] and fg.sum() == 1
    a = np.zeros(100, dtype=bool)
    a[:10] = True
    b = a.copy()
    b[10:12] = True
    assert not keep(b, a)  # IoU 10/12 > 0.5
    assert keep(b, np.zeros(100, dtype=bool))  # an empty previous mask: IoU 0
    assert keep(np.roll(a, 50), a)  # disjoint, 10 % of the grid: kept
    tiny = np.zeros(100, dtype=bool)
    tiny[0] = True
    assert not keep(tiny, np.zeros(100, dtype=bool))  # covers 1 %


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(grid=(4, 5)), "grid"),
        (dict(grid="ab"), "grid"),
        (dict(max_objects=0), "max_objects"),
        (dict(max_objects=2.0), "max_objects"),
        (dict(eps=0.0), "eps"),
        (dict(tau=float("nan")), "tau"),
        (dict(method="arpack"), "method"),
    ],
)
def test_maskcut_rejects_bad_input(kwargs, match):
    args = dict(grid=(4, 4))
    args.update(kwargs)
    grid = args.pop("grid")
    with pytest.raises(ValueError, match=match):
        maskcut(torch.randn(16, 3), grid, **args)


def test_maskcut_rejects_bad_features():
    with pytest.raises(ValueError, match="features"):
        maskcut(torch.randn(2, 2, 16, 3), (4, 4))
    with pytest.raises(ValueError, match="features"):
        maskcut(torch.full((16, 3), float("nan")), (4, 4))
    with pytest.raises(ValueError, match="features"):
        maskcut(torch.ones(16, 3, dtype=torch.long), (4, 4))


def test_kway_matches_scikit_learn():
    fx = torch.load(DATA / "kway_fixture.pt")
    for case in fx["cases"]:
        labels = diffeig.ncut.kway(case["Z"], case["k"], start=case["start"])
        assert torch.equal(labels, case["labels"]), case["random_state"]


def test_kway_batched_and_seeded():
    case = torch.load(DATA / "kway_fixture.pt")["cases"][1]
    Z = torch.stack([case["Z"], case["Z"]])
    out = diffeig.ncut.kway(Z, case["k"], start=case["start"])
    assert out.shape == (2, Z.shape[1]) and torch.equal(out[0], case["labels"])
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(
        diffeig.ncut.kway(case["Z"], 3, generator=g1), diffeig.ncut.kway(case["Z"], 3, generator=g2)
    )


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.randn(10, 3), 1), "k"),
        ((torch.randn(10, 3), 4), "k"),
        ((torch.randn(10), 2), "Z"),
        ((torch.full((10, 3), float("inf")), 2), "finite"),
    ],
)
def test_kway_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        diffeig.ncut.kway(*args)
    with pytest.raises(ValueError, match="start"):
        diffeig.ncut.kway(torch.randn(10, 3), 2, start=10)


def test_kway_takes_numpy_and_torch_integers_as_start():
    import numpy as np

    Z = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    want = diffeig.ncut.kway(Z, 3, start=4)
    for start in (np.int64(4), np.int32(4), torch.tensor(4)):
        assert torch.equal(diffeig.ncut.kway(Z, 3, start=start), want), type(start)
    for bad in (np.float64(4.0), True, np.int64(10)):
        with pytest.raises(ValueError, match="start must be a node index"):
            diffeig.ncut.kway(Z, 3, start=bad)
