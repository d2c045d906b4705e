"""Reliability round 4 (issue 31): each case a reproducer from the probe, each giving the
right answer or one clear error line."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import diffeig

DATA = Path(__file__).parent / "data"
pytestmark = pytest.mark.filterwarnings(
    "ignore:Sparse (CSR|CSC|BSR|BSC) tensor support", "ignore:Sparse invariant checks"
)


def _rbf(x: torch.Tensor, sigma: float) -> np.ndarray:
    """The kernel from exact pairwise differences in float64 (no expansion)."""
    xd = x.double().numpy()
    d2 = ((xd[..., :, None, :] - xd[..., None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 / sigma / sigma)


# ------------------------------------------------- gaussian_affinity: no cancellation


@pytest.mark.parametrize(
    "make, sigma",
    [
        # float32 features far from the origin with a small spread (was off by 1)
        (lambda g: torch.randn(120, 8, generator=g) * 0.01 + 100, 0.01),
        # pixel coordinates + 4000 (was off by 0.89)
        (lambda g: torch.rand(120, 2, generator=g, dtype=torch.float64) * 20 + 4000, 1.5),
        # float64, offset 1e6, spread 1e-3 (was off by 1)
        (lambda g: torch.randn(120, 3, generator=g, dtype=torch.float64) * 1e-3 + 1e6, 1e-3),
        # two tight clusters far from their common centre: centring alone does not help
        (
            lambda g: torch.cat(
                [
                    torch.randn(40, 3, generator=g, dtype=torch.float64) * 1e-4 + 1e4,
                    torch.randn(40, 3, generator=g, dtype=torch.float64) * 1e-4 - 1e4,
                ]
            ),
            1e-4,
        ),
    ],
)
def test_gaussian_affinity_survives_cancellation(make, sigma):
    x = make(torch.Generator().manual_seed(0))
    W = diffeig.ncut.gaussian_affinity(x, sigma=sigma)
    assert W.dtype == x.dtype
    err = np.abs(W.double().numpy() - _rbf(x, sigma)).max()
    assert err < (1e-6 if x.dtype == torch.float32 else 1e-12), err
    assert torch.equal(W, W.mT) and bool((W.diagonal() == 1).all())


def test_gaussian_affinity_batched_and_differentiable_far_from_the_origin():
    x = torch.randn(2, 3, 10, 4, dtype=torch.float64) * 1e-3 + 1e3
    W = diffeig.ncut.gaussian_affinity(x, sigma=1e-3)
    for a in range(2):
        for b in range(3):
            assert np.abs(W[a, b].numpy() - _rbf(x[a, b], 1e-3)).max() < 1e-12
    y = (torch.randn(7, 2, dtype=torch.float64) + 100).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: diffeig.ncut.gaussian_affinity(t, sigma=0.7), y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gaussian_affinity_at_extreme_sigmas(dtype):
    x = torch.randn(12, 3, dtype=dtype).requires_grad_()
    tiny = diffeig.ncut.gaussian_affinity(x, sigma=1e-300)  # was NaN
    assert torch.equal(tiny, torch.eye(12, dtype=dtype))
    tiny.sum().backward()
    assert bool(torch.isfinite(x.grad).all())
    huge = diffeig.ncut.gaussian_affinity(x, sigma=1e300)  # was OverflowError
    assert torch.equal(huge, torch.ones(12, 12, dtype=dtype))


# ----------------------------------------------- subnormal and overflowing scales of W


def _graph(dtype=torch.float64, n=40):
    g = torch.Generator().manual_seed(0)
    f = torch.nn.functional.normalize(torch.randn(n, 6, generator=g, dtype=torch.float64), dim=-1)
    return diffeig.ncut.affinity(f).to(dtype)


@pytest.mark.parametrize("dtype, s", [(torch.float32, 1e-40), (torch.float64, 1e-310)])
@pytest.mark.parametrize("method", ["dense", "auto", "lobpcg"])
@pytest.mark.parametrize("laplacian", ["ncut", "unnormalized"])
def test_subnormal_affinities_are_solved_at_unit_scale(dtype, s, method, laplacian):
    W = _graph(dtype)
    ref, zref = diffeig.sym_eigh_ncut(W, 3, laplacian=laplacian)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning either
        lam, z = diffeig.sym_eigh_ncut(W * s, 3, method=method, laplacian=laplacian)
    assert bool(torch.isfinite(lam).all() and torch.isfinite(z).all())  # was NaN / raised
    # the subnormal input itself holds only ~16 (float32) / ~33 (float64) bits
    rtol = 1e-3 if dtype == torch.float32 else 1e-9
    expect = ref * s if laplacian == "unnormalized" else ref
    assert torch.allclose(lam[1:].double(), expect[1:].double(), rtol=rtol, atol=0)
    # the vectors: D-orthonormal ones scale by s^-1/2, those of D - W not at all
    zs = z.double() * (s**0.5 if laplacian == "ncut" else 1.0)
    cos = (zs[:, 1:] * zref[:, 1:].double()).sum(0) / zs[:, 1:].norm(dim=0)
    assert bool((cos.abs() / zref[:, 1:].double().norm(dim=0) > 1 - rtol).all())


def test_affinities_near_the_largest_float():
    W = _graph()
    big = W * (1.7e308 / W.max())  # was OverflowError from the scale
    for method in ("dense", "lobpcg"):
        lam, z = diffeig.sym_eigh_ncut(big, 3, method=method)
        assert torch.allclose(lam, diffeig.sym_eigh_ncut(W, 3)[0], rtol=1e-9, atol=1e-15)
        # D - W's own eigenvalues exceed float64: one clear line, not inf
        with pytest.raises(ValueError, match="too large for laplacian='unnormalized'"):
            diffeig.sym_eigh_ncut(big, 3, method=method, laplacian="unnormalized")


# ------------------------------------------------------------------- small arguments


def test_eigh_and_eigvalsh_take_out_as_torch_does():
    A = torch.randn(3, 5, 5, dtype=torch.float64)
    A = A + A.mT
    L, V = torch.empty(0, dtype=torch.float64), torch.empty(0, dtype=torch.float64)
    got = diffeig.eigh(A, out=(L, V))
    ref = torch.linalg.eigh(A)
    assert got.eigenvalues is L and got.eigenvectors is V
    assert torch.allclose(L, ref.eigenvalues) and torch.allclose(V.abs(), ref.eigenvectors.abs())
    w = torch.empty(0, dtype=torch.float64)
    assert diffeig.eigvalsh(A, out=w) is w and torch.allclose(w, ref.eigenvalues)
    with pytest.raises(ValueError, match="out must be a tuple of 2 tensors"):
        diffeig.eigh(A, out=L)
    with pytest.raises(ValueError, match="dtype"):
        diffeig.eigh(A, out=(torch.empty(0, dtype=torch.float32), V))
    with pytest.raises(RuntimeError, match="automatic differentiation"):
        diffeig.eigh(A.requires_grad_(), out=(L, V))


def test_numpy_integers_are_ints_and_options_are_checked_on_every_path():
    W = _graph()
    lam, _ = diffeig.sym_eigh_ncut(W, np.int64(2))
    assert lam.shape == (2,)
    assert diffeig.eigsh(W, np.int32(2))[0].shape == (2,)
    for method in ("dense", "lobpcg", "auto"):
        with pytest.raises(ValueError, match="on_fail"):
            diffeig.sym_eigh_ncut(W, 2, method=method, on_fail="ignore")
        with pytest.raises(ValueError, match="tol"):
            diffeig.sym_eigh_ncut(W, 2, method=method, tol="abc")
        with pytest.raises(ValueError, match="tol"):
            diffeig.sym_eigh_ncut(W, 2, method=method, tol=float("nan"))
    with pytest.raises(ValueError, match="k must be an int"):
        diffeig.sym_eigh_ncut(W, 2.0)
    with pytest.raises(ValueError, match="on_fail"):
        diffeig.eigsh(W, 2, method="dense", on_fail="ignore")


# ---------------------------------------------------------------- data loss (highest)


def _cli():
    """The recipe's command line (skips without the [dncut] extra)."""
    pytest.importorskip("timm")
    pytest.importorskip("torchvision")
    from diffeig.dncut import cli

    return cli


def _one_line_error(err: str, *needles):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err and lines and lines[-1].startswith("error: "), err
    for n in needles:
        assert n in lines[-1], (n, err)


def _boxes_root(tmp_path) -> Path:
    from PIL import Image

    root = tmp_path / "boxes"
    (root / "images").mkdir(parents=True)
    Image.open(DATA / "quokka.jpg").convert("RGB").resize((96, 64)).save(root / "images" / "q.jpg")
    (root / "boxes.json").write_text(json.dumps({"q.jpg": [[15, 5, 55, 60]]}))
    return root


def test_evaluation_never_writes_over_its_inputs_or_an_existing_output(tmp_path, capsys):
    cli = _cli()
    root = _boxes_root(tmp_path)
    ann = root / "boxes.json"
    before = ann.read_bytes()
    argv = ["eval-discovery", "--dataset", "boxes", "--root", str(root), "--arch", "color"]
    argv += ["--quiet", "--workers", "0"]
    link = tmp_path / "link.json"
    os.symlink(ann, link)
    for target in (ann, link):  # the dataset's own file, also through a link, even with --force
        for force in ([], ["--force"]):
            assert cli.main([*argv, "--output", str(target), *force]) == 2
            _one_line_error(capsys.readouterr().err, "--output", "dataset annotation file")
    assert ann.read_bytes() == before
    out = tmp_path / "r.json"
    out.write_text("keep me")
    assert cli.main([*argv, "--output", str(out)]) == 2
    _one_line_error(capsys.readouterr().err, "exists", "--force")
    assert out.read_text() == "keep me"
    assert cli.main([*argv, "--output", str(out), "--force"]) == 0
    assert json.loads(out.read_text())["summary"]["images"] == 1
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]  # written atomically


def test_visualize_never_writes_over_its_image(tmp_path, capsys):
    cli = _cli()
    from PIL import Image

    img = tmp_path / "img.png"
    Image.open(DATA / "quokka.jpg").convert("RGB").resize((64, 48)).save(img)
    before = img.read_bytes()
    argv = ["visualize", str(img), "--arch", "color", "--eigenvectors", "1"]
    for force in ([], ["--force"]):
        assert cli.main([*argv, "--out", str(img), *force]) == 2
        _one_line_error(capsys.readouterr().err, "--out", "an input image")
    # a folder whose figure would be the input itself (<folder>/<stem>.png)
    assert cli.main([*argv, "--out", str(tmp_path), "--force"]) == 2
    _one_line_error(capsys.readouterr().err, "an input image")
    assert img.read_bytes() == before
    # an extension that is no figure: refused, not a folder named v.gif
    assert cli.main([*argv, "--out", str(tmp_path / "v.gif")]) == 2
    _one_line_error(capsys.readouterr().err, "--out", ".png")
    assert not (tmp_path / "v.gif").exists()
    fig = tmp_path / "fig.png"
    assert cli.main([*argv, "--out", str(fig)]) == 0
    assert cli.main([*argv, "--out", str(fig)]) == 2
    _one_line_error(capsys.readouterr().err, "exists", "--force")
    assert cli.main([*argv, "--out", str(fig), "--force"]) == 0


# ------------------------------------------------------- masks and images read right


def _quokka_mask() -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(DATA / "quokka_mask.png").convert("L").resize((96, 64))) > 127


@pytest.mark.parametrize("convention", ["0/1", "0/255", "16-bit", "16-bit 0/1", "1-bit", "red"])
def test_masks_are_read_in_any_binary_convention(convention, tmp_path):
    _cli()
    from PIL import Image

    from diffeig.dncut.eval.datasets import read_mask

    m = _quokka_mask()
    path = tmp_path / "m.png"
    if convention == "0/1":
        Image.fromarray(m.astype(np.uint8)).save(path)
    elif convention == "0/255":
        Image.fromarray(m.astype(np.uint8) * 255).save(path)
    elif convention == "16-bit":
        Image.fromarray(m.astype(np.uint16) * 65535).save(path)
    elif convention == "16-bit 0/1":
        Image.fromarray(m.astype(np.uint16)).save(path)
    elif convention == "1-bit":
        Image.fromarray(m).convert("1").save(path)
    else:  # a red foreground on black
        rgb = np.zeros((*m.shape, 3), np.uint8)
        rgb[m] = (255, 0, 0)
        Image.fromarray(rgb).save(path)
    got = read_mask(path)
    assert torch.equal(got, torch.from_numpy(m.astype(np.float32))), convention


def test_an_ambiguous_colour_mask_is_refused_naming_the_file(tmp_path):
    _cli()
    from PIL import Image

    from diffeig.dncut.eval.datasets import read_mask
    from diffeig.dncut.images import UnreadableImage

    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:10] = (255, 0, 0)
    rgb[15:] = (0, 255, 0)
    Image.fromarray(rgb).save(tmp_path / "m.png")
    with pytest.raises(UnreadableImage, match=r"m\.png.*exactly two colours"):
        read_mask(tmp_path / "m.png")


def test_saliency_scores_0_1_masks_as_their_0_255_copy(tmp_path):
    cli = _cli()
    from PIL import Image

    q = Image.open(DATA / "quokka.jpg").convert("RGB").resize((96, 64))
    m = _quokka_mask()
    ious = []
    for scale in (255, 1):
        root = tmp_path / f"s{scale}"
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        q.save(root / "images" / "q.png")
        Image.fromarray(m.astype(np.uint8) * scale).save(root / "masks" / "q.png")
        out = root / "r.json"
        argv = ["eval-saliency", "--dataset", "folder", "--root", str(root), "--arch", "color"]
        assert cli.main([*argv, "--quiet", "--workers", "0", "--output", str(out)]) == 0
        ious.append(json.loads(out.read_text())["summary"]["iou"])
    assert ious[0] == ious[1] and ious[0] > 0.3  # 0/1 masks scored 0.0


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    _cli()
    from PIL import Image

    from diffeig.dncut.images import read_image

    grey = np.asarray(Image.open(DATA / "quokka.jpg").convert("L").resize((96, 64)))
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    Image.fromarray(grey).save(tmp_path / "g8.png")
    a16 = np.asarray(read_image(tmp_path / "g16.png"), dtype=np.int32)
    a8 = np.asarray(read_image(tmp_path / "g8.png"), dtype=np.int32)
    assert np.abs(a16 - a8).max() <= 1 and a16.std() > 20  # was all white


def test_exif_rotated_jpeg_is_read_upright(tmp_path):
    _cli()
    from PIL import Image

    from diffeig.dncut.images import read_image

    img = Image.open(DATA / "quokka.jpg").convert("RGB").resize((120, 80))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "r.jpg", exif=exif)
    shown = read_image(tmp_path / "r.jpg")
    assert shown.size == (80, 120)  # as a viewer (and the mask drawn over it) has it


def test_inverted_and_outside_boxes_are_named_in_a_warning(tmp_path):
    _cli()
    from diffeig.dncut.eval.datasets import BoxWarning, DiscoveryDataset

    root = _boxes_root(tmp_path)
    (root / "boxes.json").write_text(json.dumps({"q.jpg": [[55, 5, 15, 60], [500, 5, 600, 60]]}))
    with pytest.warns(BoxWarning, match=r"q: 1 inverted .* 1 outside the 96x64 image"):
        DiscoveryDataset("boxes", str(root))[0]


def test_train_on_one_image_file_is_one_line_and_writes_nothing(tmp_path, capsys):
    cli = _cli()
    out = tmp_path / "run"
    code = cli.main(
        ["train", "--config", "demo", "--data", str(DATA / "quokka.jpg")] + ["--output", str(out)]
    )
    assert code == 2
    _one_line_error(capsys.readouterr().err, "--data", "one image")
    assert not out.exists()  # no stray config.yaml
    blob = tmp_path / "list.txt"
    blob.write_bytes(b"\xff\xfe\x00bin")
    assert cli.main(["train", "--config", "demo", "--data", str(blob), "--output", str(out)]) == 2
    _one_line_error(capsys.readouterr().err, "--data", "UTF-8")


# ---------------------------------------------------- pixel graphs and sparse layouts


@pytest.mark.parametrize("shape, radius", [((3, 4, 4), 5.0), ((3, 2, 2), 5.0), ((3, 7, 9), 1e6)])
def test_a_radius_that_covers_the_image_gives_the_complete_graph(shape, radius):
    img = torch.rand(shape, dtype=torch.float64)
    W = diffeig.ncut.pixel_affinity(img, radius=radius).to_dense()
    n = shape[1] * shape[2]
    assert W.shape == (n, n) and int((W > 0).sum()) == n * (n - 1)
    flat = img.reshape(3, -1)
    ys, xs = torch.meshgrid(torch.arange(shape[1]), torch.arange(shape[2]), indexing="ij")
    pos = torch.stack([ys.reshape(-1), xs.reshape(-1)], -1).double()
    expect = torch.exp(-(torch.cdist(flat.T, flat.T) ** 2) / 0.1**2) * torch.exp(
        -(torch.cdist(pos, pos) ** 2) / 4.0**2
    )
    assert torch.allclose(W, expect.fill_diagonal_(0), rtol=1e-12, atol=1e-300)


def test_pixel_affinity_names_the_layout_and_refuses_what_cannot_fit():
    with pytest.raises(ValueError, match=r"channels-first.*\(H, W, C\).*movedim"):
        diffeig.ncut.pixel_affinity(torch.rand(40, 50, 3))
    with pytest.raises(ValueError, match=r"GiB, more than this machine's"):
        diffeig.ncut.pixel_affinity(torch.rand(3, 4000, 3000), radius=30)
    # colours in [0, 255]: the zero-degree message says what to change
    W = diffeig.ncut.pixel_affinity(torch.rand(3, 8, 8, dtype=torch.float64) * 255, radius=1)
    with pytest.raises(ValueError, match=r"colours are expected in \[0, 1\]"):
        diffeig.sym_eigh_ncut(W, 2)


def test_other_sparse_layouts_are_solved_as_coo():
    img = torch.rand(3, 6, 6, dtype=torch.float64)
    W = diffeig.ncut.pixel_affinity(img, radius=2)
    ref, _ = diffeig.sym_eigh_ncut(W.to_dense(), 3)
    dense = W.to_dense()
    for layout in (dense.to_sparse_csc(), dense.to_sparse_bsr((2, 2)), dense.to_sparse_bsc((3, 3))):
        lam, z = diffeig.sym_eigh_ncut(layout, 3)
        assert torch.allclose(lam, ref, atol=1e-9), layout.layout


def test_sparse_edges_are_one_clear_line():
    empty = torch.sparse_coo_tensor(
        torch.zeros(3, 0, dtype=torch.long), torch.zeros(0, dtype=torch.float64), (0, 5, 5)
    )
    lam, z = diffeig.sym_eigh_ncut(empty, 2)
    assert lam.shape == (0, 2) and z.shape == (0, 5, 2)
    W = diffeig.ncut.pixel_affinity(torch.rand(3, 6, 6, dtype=torch.float64), radius=2)
    with pytest.raises(ValueError, match="meta"):
        diffeig.sym_eigh_ncut(W.to("meta"), 2)
    for n in (2**28, 2**31):
        huge = torch.sparse_coo_tensor(
            torch.tensor([[0, 1], [1, 0]]), torch.ones(2, dtype=torch.float64), (n, n)
        )
        with pytest.raises(ValueError, match=r"GiB, more than this machine's"):
            diffeig.sym_eigh_ncut(huge, 2, laplacian="unnormalized")
    for A in (W, W.to_sparse_csr(), W.to("meta")):
        with pytest.raises(ValueError, match=r"dense \(strided\).*to_dense"):
            diffeig.eigsh(A, 2)


def test_pixel_ncut_refuses_a_pixel_graph_that_cannot_fit():
    _cli()
    from diffeig.dncut.eval.pixel_ncut import refine

    prior = torch.zeros(3000, 4000, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"--pixel-work-side 4096.*GiB.*smaller --pixel-work"):
        refine(torch.zeros(3, 8, 8), prior, work_side=4096, radius=32)


# ------------------------------------------------------------ solvers at near ties


def three_blobs(eps: float, seed: int = 0) -> torch.Tensor:
    """A Gaussian graph of three blobs 5 apart, two of them near mirror images (``eps`` of
    noise breaks the symmetry): l2 ~ 7e-9 and l3 ``~eps`` above it."""
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(50, 2, generator=g, dtype=torch.float64) * 0.3
    parts = []
    for j in range(3):
        t = 2 * math.pi * j / 3
        rot = torch.tensor([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        centre = 5 / math.sqrt(3) * torch.tensor([-math.sin(t), math.cos(t)])
        parts.append(b @ rot.double().T + centre.double())
    x = torch.cat(parts)
    x = x + eps * torch.randn(x.shape, generator=g, dtype=torch.float64)
    return diffeig.ncut.gaussian_affinity(x, sigma=1.0)


def _d_sin(z: torch.Tensor, ref: torch.Tensor, d: torch.Tensor) -> float:
    cos = (z * d * ref).sum() / ((z * d * z).sum() * (ref * d * ref).sum()).sqrt()
    return float((1 - cos.clamp(-1, 1) ** 2).clamp_min(0).sqrt())


@pytest.mark.parametrize("eps", [1e-3, 1e-2, 1e-1])
def test_one_graph_lanczos_hands_a_near_tie_to_lobpcg(eps):
    import scipy.linalg

    W = three_blobs(eps)
    d = W.sum(-1)
    lam_ref, Z_ref = scipy.linalg.eigh((torch.diag(d) - W).numpy(), torch.diag(d).numpy())
    assert 1e-3 < lam_ref[2] / lam_ref[1] - 1 < 0.5  # a near tie, l2 ~ 7e-9
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lam, z = diffeig.sym_eigh_ncut(W, 2, method="lobpcg")
    # Lanczos alone returned l2 1.4 % off and z2 at sin 0.95, silently
    assert abs(lam[1].item() - lam_ref[1]) / lam_ref[1] < 1e-6
    assert _d_sin(z[:, 1], torch.from_numpy(Z_ref[:, 1]), d) < 1e-4


def four_clusters() -> torch.Tensor:
    """A kNN Gaussian graph of four clusters joined by 1e-12 floors: l2 ~ 1.9e-11, with
    l3 and l4 as small."""
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([(0, 0), (4, 0), (0, 4), (4, 4)], dtype=torch.float64)
    x = torch.cat([torch.randn(60, 2, generator=g, dtype=torch.float64) * 0.3 + c for c in centres])
    return diffeig.ncut.gaussian_affinity(x, sigma=0.7, topk=10) + 1e-12


def test_auto_never_iterates_longer_than_a_dense_solve(monkeypatch):
    import diffeig._lobpcg as lobpcg_module
    from diffeig.ncut._choice import auto_budget

    W = four_clusters()
    iterations = []
    real = lobpcg_module.lobpcg

    def counting(*args, **kwargs):  # a spy: the solver itself is unchanged
        out = real(*args, **kwargs)
        iterations.append(out[2].iterations)
        return out

    monkeypatch.setattr(lobpcg_module, "lobpcg", counting)
    lam, z = diffeig.sym_eigh_ncut(W, 2, method="auto")
    # it took 754 iterations (1.7 s of CPU against the dense solve's 0.01 s); now the
    # budget, then the dense solve's answer
    assert iterations and max(iterations) <= auto_budget(W.shape[-1]) == 40
    ref, zref = diffeig.sym_eigh_ncut(W, 2, method="dense")
    assert torch.equal(lam, ref) and torch.equal(z, zref)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_sparse_near_islands_find_the_dense_pairs(seed):
    # a noisy 20 x 20 image, radius 2, sigma_color 0.1: weights 1e-47 .. 1, the graph
    # falls apart into near-islands (l3 came back 5.8e-10 where it is 1.4e-10)
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(3, 20, 20, generator=g, dtype=torch.float64)
    W = diffeig.ncut.pixel_affinity(img, radius=2, sigma_color=0.1)
    ref, _ = diffeig.sym_eigh_ncut(W.to_dense(), 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lam, _ = diffeig.sym_eigh_ncut(W, 3)
    floor = 1000 * torch.finfo(torch.float64).eps  # of the bound 2: numerically 0 below
    assert bool(((lam - ref).abs() <= 1e-3 * ref + floor).all()), (lam, ref)


def test_an_ill_conditioned_gradient_is_said():
    from diffeig._implicit.ncut import IllConditionedGradient

    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 20, 20, generator=g, dtype=torch.float64)
    W = diffeig.ncut.pixel_affinity(img, radius=2, sigma_color=0.1)
    for A in (W.to_dense(), W):
        v = A.coalesce().values().clone().requires_grad_() if A.is_sparse else None
        X = torch.sparse_coo_tensor(A.indices(), v, A.shape) if v is not None else A.clone()
        X = X if v is not None else X.requires_grad_()
        lam, z = diffeig.sym_eigh_ncut(X, 3)
        with pytest.warns(IllConditionedGradient, match="ill-conditioned"):
            (z[:, 1:] / z[:, 1:].norm(dim=0)).sum().backward()
    # an ordinary graph: no warning
    W = _graph().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for method in ("dense", "lobpcg"):
            lam, z = diffeig.sym_eigh_ncut(W, 3, method=method)
            (z**2).sum().backward()


def test_an_outlier_pixel_is_named_by_the_ill_conditioning_warning():
    # a pixel unlike all its neighbours (degree ~1e-30 on a smooth image): z = D^-1/2 u
    # divides by its root, and the warning says which node and what degree
    from diffeig._implicit.ncut import IllConditionedGradient

    img = torch.linspace(0, 0.2, 16, dtype=torch.float64).expand(3, 16, 16).clone()
    img[:, 5, 9] = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    W = diffeig.ncut.pixel_affinity(img, radius=2, sigma_color=0.1).coalesce()
    d = torch.sparse.sum(W, 1).to_dense()
    assert int(d.argmin()) == 5 * 16 + 9 and float(d.min()) < 1e-20
    for A in (W.to_dense(), W):
        v = A.coalesce().values().clone().requires_grad_() if A.is_sparse else None
        X = torch.sparse_coo_tensor(A.indices(), v, A.shape) if v is not None else A.clone()
        X = X if v is not None else X.requires_grad_()
        lam, z = diffeig.sym_eigh_ncut(X, 2)
        with pytest.warns(IllConditionedGradient, match=r"smallest degree is .* at node 89,"):
            (z[:, 1] ** 2 * torch.arange(256.0, dtype=z.dtype)).sum().backward()


def test_a_boundary_tie_is_said_and_a_resolved_one_is_not():
    from diffeig.ncut._lobpcg_pairs import UnresolvedPair

    W = three_blobs(1e-5)[None]  # l2 and l3 2e-13 apart: z2 is any vector of their span
    with pytest.warns(UnresolvedPair, match="not resolved from the"):
        diffeig.sym_eigh_ncut(W, 2, method="lobpcg")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lam, _ = diffeig.sym_eigh_ncut(W, 3, method="lobpcg")  # both returned: resolved
        diffeig.sym_eigh_ncut(W, 2, method="auto")  # auto solves it densely
        diffeig.sym_eigh_ncut(_graph()[None], 2, method="lobpcg")
    ref, _ = diffeig.sym_eigh_ncut(W, 3, method="dense")
    assert torch.allclose(lam, ref, rtol=1e-6, atol=0)


# ---------------------------------------------------------------- pixel-ncut's sign


def test_pixel_ncut_side_follows_the_token_foreground():
    _cli()
    from diffeig.dncut.eval.pixel_ncut import orient

    token = torch.zeros(40, 40, dtype=torch.bool)
    token[5:15, 5:15] = True  # a small object
    z2 = torch.full((40, 40), 0.01, dtype=torch.float64)
    z2[token] = -1.0  # the cut found the object, with the solver's sign negative there
    signed, agreement = orient(z2, token)
    assert torch.equal(signed > 0, token) and agreement == 1.0
    # a cut of a background region R, large on R: sum(z2 (prior - 1/2)) kept the side
    # that holds everything but R (the object's complement, nearly), silently
    z2 = torch.full((40, 40), 0.01, dtype=torch.float64)
    z2[30:, :] = -3.0
    signed, agreement = orient(z2, token)
    assert bool((signed > 0)[token].all())  # the side holding the object
    assert agreement < 0.5  # and it disagrees on most pixels: refine() falls back


def test_pixel_ncut_falls_back_where_the_cut_disagrees_and_counts_it():
    _cli()
    from diffeig.dncut.eval.pixel_ncut import DISAGREES, refine

    # the colours split the image at two thirds; the token mask holds a small square
    # of the top's colour: the cut cannot see it, and its side of the object disagrees
    image = torch.zeros(3, 48, 48, dtype=torch.float64)
    image[:, 32:] = 1.0
    prior = torch.zeros(48, 48, dtype=torch.float64)
    prior[4:8, 4:8] = 1.0
    r = refine(image, prior, prior_weight=0.0)
    assert not r.cut and r.fallback == DISAGREES
    assert r.mask.shape == (48, 48)


def test_colour_bar_labels_fit_and_text_scales_with_the_figure():
    _cli()
    from PIL import ImageDraw

    from diffeig.dncut.figures import compose, font_for, heat

    z = np.linspace(-1, 1, 400).reshape(20, 20) * 1234.5
    tile = np.asarray(heat(z, (480, 360)))
    right = tile[:, -3:]  # the labels end inside the tile, before its last columns
    assert (right == 255).all(), "a colour-bar label reaches the tile's edge (clipped)"
    bar = tile[:, -80:]
    assert (bar.sum(-1) < 200).sum() > 50  # dark pixels: the labels are drawn
    small, large = font_for(200), font_for(3000)
    assert large.size >= 3000 // 25 > small.size
    fig = compose([([heat(z, (900, 600))], ["z2"])], ["image.png"])
    draw = ImageDraw.Draw(fig)
    assert draw.textbbox((0, 0), "z2", font=font_for(900))[3] >= 30  # not 10 px text


def test_a_sparse_solve_that_does_not_converge_never_forms_n_by_n(monkeypatch):
    import diffeig._lobpcg as lobpcg_module

    def refuse(*args, **kwargs):  # the dense fallback's first step
        raise AssertionError("a sparse W was materialized densely")

    monkeypatch.setattr(lobpcg_module, "materialize", refuse)
    img = torch.rand(3, 20, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    W = diffeig.ncut.pixel_affinity(img, radius=2, sigma_color=0.5)
    with pytest.warns(RuntimeWarning, match="last iterate") as record:
        lam, z = diffeig.sym_eigh_ncut(W, 3, max_iter=2)
    assert not any("method='dense'" in str(w.message) for w in record)
    assert lam.shape == (3,) and bool(torch.isfinite(lam).all())


def test_a_numerically_disconnected_island_against_shift_invert():
    import scipy.sparse
    import scipy.sparse.linalg
    from PIL import Image

    photo = Image.open(DATA / "quokka.jpg").convert("RGB").resize((120, 120))
    img = torch.from_numpy(np.asarray(photo, dtype=np.float64) / 255).permute(2, 0, 1)
    img = img.contiguous()
    img[:, 60, 60:62] = torch.tensor([0.0, 1.0, 0.0])[:, None]  # a green 2-pixel island
    W = diffeig.ncut.pixel_affinity(img, radius=5)
    lam, _ = diffeig.sym_eigh_ncut(W, 3)
    i, j = W.indices().numpy()
    A = scipy.sparse.csr_matrix((W.values().numpy(), (i, j)), shape=W.shape)
    d = np.asarray(A.sum(1)).ravel()
    ref = scipy.sparse.linalg.eigsh(
        scipy.sparse.diags(d) - A, k=3, M=scipy.sparse.diags(d), sigma=-1e-6, which="LM"
    )[0]
    ref = np.sort(ref)
    assert lam[1] < 1e-12  # the island's pair, numerically 0
    assert abs(lam[2].item() - ref[2]) <= 1e-6 * ref[2]  # then the photo's Fiedler pair


def test_pixel_ncut_with_a_radius_larger_than_its_work_side(tmp_path):
    cli = _cli()
    out = tmp_path / "v.png"
    argv = ["visualize", str(DATA / "quokka.jpg"), "--arch", "color", "--post", "pixel-ncut"]
    argv += ["--pixel-work-side", "8", "--pixel-radius", "32", "--max-side", "96"]
    assert cli.main([*argv, "--out", str(out)]) == 0 and out.stat().st_size > 0
