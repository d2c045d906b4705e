"""Regenerate tests/data/authors/fixtures.pt from the authors' code (run once, by hand).

    git clone https://github.com/csyanbin/DiffNCuts /tmp/DiffNCuts
    git -C /tmp/DiffNCuts checkout b34d38abae653808825eb529ac3c3efd56db7593
    python tests/data/authors/make_fixtures.py /tmp/DiffNCuts

Runs the authors' functions (nothing of theirs is copied into this repository) on seeded
inputs and saves inputs and outputs as tensors, which tests/test_fidelity.py compares with
ours without network access:

- ``lars``: their ``util/LARS.py`` around ``torch.optim.SGD(momentum=0.9)``, grouped as
  their ``eigen_pred_iou.py`` groups (``bn`` or ``bias`` in the name: no decay, not
  adapted), ``LARS(optimizer, eps=0.0)``: two steps on given gradients, float64.
- ``invaug``: ``EIGEN.invaug`` (roi_align of the overlap box, flip back) on a feature map.
- ``saliency``: their ``measure.py`` (``Eval_fmeasure``, ``IOU``, ``accuracy``) on 8-bit
  saliency maps (bilinearly upsampled token masks, as their evaluation saves them) against
  ground truths with grey anti-aliased edges: the quokka's mask blurred, and a disc.
- ``tokencut``: TokenCut's ``ncut`` (``TokenCut/object_discovery.py``: binary graph tau 0.2,
  eps 1e-5, scipy's generalized eigh, mean split, seed, component, box) on 14 seeded
  14 x 14 feature maps, half of them with 2 x 2 blocks of identical tokens (exact ties).
- ``pos_embed``: their (DINO's) ``VisionTransformer.interpolate_pos_encoding`` of a seeded
  ViT-S/16 position embedding for a 10 x 15 and a 14 x 9 patch grid.
- ``model``: their ``EIGEN.forward`` end to end (keys of a ViT-S/16 through their heads,
  ``invaug``, eigenvectors and loss) on 24 two-view samples of 64 x 64 (4 x 4 tokens) in
  float64, every weight set by :func:`deterministic_weights` (so the test can load the same
  values into ours without storing 22 M of them), then one step of their LARS: the loss,
  the gradients and updated values of a few parameters, and their z2 of each map.
- ``loss``: their training objective from the four aligned feature maps: ``get_eigenvectors``
  (``which_matrix='ours'``, tau 0) of each, ``eigen_loss`` of (online view 1, target
  view 2) and (online view 2, target view 1), combined as ``EIGEN.forward`` combines them
  (weight 0.05), in float64 (their final ``.float()`` casts are made no-ops while it runs,
  and ``.cuda()`` too, since this machine has no GPU); the loss and its gradient with
  respect to the four maps.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch

COMMIT = "b34d38abae653808825eb529ac3c3efd56db7593"
OUT = Path(__file__).with_name("fixtures.pt")


@contextlib.contextmanager
def float64_without_gpu():
    """Their code casts eigenvectors to float32 and masks to CUDA: both no-ops here."""
    saved = torch.Tensor.float, torch.Tensor.cuda
    # floating tensors keep float64; masks (bool -> float) become float64
    torch.Tensor.float = lambda self, *a, **k: self if self.is_floating_point() else self.double()
    torch.Tensor.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.float, torch.Tensor.cuda = saved


def lars_fixture(LARS):
    g = torch.Generator().manual_seed(0)
    names = ["blocks.0.norm1.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias",
             "head1.bn1.weight", "head2d_proj.mlp.1.weight",
             "head2d_proj.mlp.0.weight"]  # fmt: skip
    shapes = [(8,), (24, 8), (24,), (8,), (8,), (8, 4, 1, 1)]
    init = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(s, generator=g, dtype=torch.float64) for s in shapes] for _ in range(2)]
    params = [torch.nn.Parameter(t.clone()) for t in init]
    named = dict(zip(names, params))
    bn = [v for n, v in named.items() if "bn" in n or "bias" in n]
    rest = [v for n, v in named.items() if not ("bn" in n or "bias" in n)]
    wd, lr = 1e-4, 0.3
    opt = torch.optim.SGD([{"params": bn, "weight_decay": 0, "ignore": True},
                           {"params": rest, "weight_decay": wd, "ignore": False}],
                          lr=lr, momentum=0.9, weight_decay=wd)  # fmt: skip
    opt = LARS(opt, eps=0.0)
    after = []
    for step in grads:
        for p, gr in zip(params, step):
            p.grad = gr.clone()
        opt.step()
        after.append([p.detach().clone() for p in params])
    return {"names": names, "init": init, "grads": grads, "after": after,
            "weight_decay": wd, "lr": lr, "momentum": 0.9, "trust_coeff": 0.001}  # fmt: skip


def feature_maps(batch, dim, side, seed):
    """Normalized per-token features with a blob per image, shrunk a little where an
    interpolation would (as aligned maps are)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    c = torch.randint(2, side - 2, (batch, 2), generator=g)
    fg = ((yy - c[:, 0, None, None]) ** 2 + (xx - c[:, 1, None, None]) ** 2) <= 4
    protos = torch.randn(batch, 2, dim, generator=g, dtype=torch.float64)
    f = torch.where(fg[:, None], protos[:, 0, :, None, None], protos[:, 1, :, None, None])
    f = f + 0.8 * torch.randn(batch, dim, side, side, generator=g, dtype=torch.float64)
    f = torch.nn.functional.normalize(f, dim=1)
    return f * (0.9 + 0.1 * torch.rand(batch, 1, side, side, generator=g, dtype=torch.float64))


def loss_fixture(module):
    batch, dim, side = 24, 16, 8  # >= 20 samples: their IoU loop keeps at least 20
    maps = [feature_maps(batch, dim, side, seed) for seed in range(4)]
    on1, on2, tg1, tg2 = (m.clone().requires_grad_() for m in maps)
    args = types.SimpleNamespace(local_rank=-1, loss_eigtype="lossall", loss_crit="BCE")
    model = module.EIGEN.__new__(module.EIGEN)  # eigen_loss reads no attribute of self

    def flat(m):
        return m.view(batch, dim, side * side).transpose(1, 2)

    z2 = {}

    def direction(online, target):
        _, e1 = module.get_eigenvectors(flat(online), which_matrix="ours", threshold_tau=0.0)
        _, e2 = module.get_eigenvectors(flat(target), which_matrix="ours", threshold_tau=0.0)
        z2[id(online)], z2[id(target)] = e1[:, :, 1].detach(), e2[:, :, 1].detach()
        out = module.EIGEN.eigen_loss(model, e1[:, :, 1], e2[:, :, 1], args, 0.5)
        return out[0], out[4], out[5], out[6]

    with float64_without_gpu():
        o1, c1, v1, u1 = direction(on1, tg2)
        o2, c2, v2, u2 = direction(on2, tg1)
    w = 0.05
    loss = o1 + o2 - w * (c1 + c2) - w * (v1 + v2) - w * (u1 + u2)
    loss.backward()
    terms = torch.stack([o1, o2, c1, c2, v1, v2, u1, u2]).detach()
    return {"maps": maps, "loss": loss.detach(), "terms": terms,
            "grads": [m.grad for m in (on1, on2, tg1, tg2)], "weight": w,
            "z2": torch.cat([z2[id(m)] for m in (on1, on2, tg1, tg2)])}  # fmt: skip


def invaug_fixture(module):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 5, 14, 14, generator=g, dtype=torch.float64)
    coords = torch.tensor([[0.1, 0.2, 0.7, 0.9], [0.0, 0.0, 1.0, 1.0], [0.33, 0.05, 0.61, 0.5]],
                          dtype=torch.float64)  # fmt: skip
    flags = [True, False, True]
    out = module.EIGEN.invaug(None, x, coords, flags)
    return {"x": x, "coords": coords, "flags": torch.tensor(flags), "out": out}


def saliency_fixture(measure):
    from PIL import Image, ImageFilter

    here = Path(__file__).resolve().parents[1]
    quokka = Image.open(here / "quokka_mask.png").convert("L").resize((320, 214), Image.BILINEAR)
    gts = [quokka.filter(ImageFilter.GaussianBlur(2))]
    yy, xx = torch.meshgrid(torch.arange(120.0), torch.arange(160.0), indexing="ij")
    disc = (1 - ((yy - 60) ** 2 + (xx - 70) ** 2).sqrt().sub(40).clamp(0, 2) / 2) * 255
    gts.append(Image.fromarray(disc.round().to(torch.uint8).numpy()))
    g = torch.Generator().manual_seed(11)
    preds, gt_arrays = [], []
    for gt in gts:
        for _ in range(2):
            h, w = gt.size[1] // 16, gt.size[0] // 16
            tokens = (torch.rand(1, 1, h, w, generator=g) > 0.6).float()
            up = torch.nn.functional.interpolate(tokens, size=(gt.size[1], gt.size[0]),
                                                 mode="bilinear", align_corners=False)  # fmt: skip
            preds.append(torch.round(up[0, 0] * 255).to(torch.uint8))
            gt_arrays.append(torch.from_numpy(__import__("numpy").asarray(gt).copy()))
    loader = [(Image.fromarray(p.numpy()), Image.fromarray(t.numpy())) for p, t in
              zip(preds, gt_arrays)]  # fmt: skip
    with float64_without_gpu():  # (only the .cuda() calls matter here)
        torch.Tensor.float = lambda self, *a, **k: self.to(torch.float32)
        f = float(measure.Eval_fmeasure(loader, cuda=False))
    iou, acc = measure.IOU(loader, cuda=False), measure.accuracy(loader, cuda=False)
    return {"preds": preds, "gts": gt_arrays, "max_f": f, "iou": iou, "accuracy": acc}


def tokencut_features(seed, h=14, w=14, channels=64, duplicate=False):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    cy, cx = torch.randint(3, h - 3, (2,), generator=g)
    fg = ((yy - cy) ** 2 + (xx - cx) ** 2) <= 9
    protos = torch.randn(2, channels, generator=g)
    f = torch.where(fg[..., None], protos[0], protos[1])
    f = f + 0.7 * torch.randn(h, w, channels, generator=g)
    if duplicate:  # 2 x 2 blocks of identical tokens: exactly tied rows of the graph
        f = f[::2, ::2].repeat_interleave(2, 0).repeat_interleave(2, 1)
    return f.permute(2, 0, 1).contiguous()  # (C, h, w)


def tokencut_fixture(od):
    cases = []
    for seed in range(14):
        feats = tokencut_features(seed, duplicate=seed % 2 == 0)
        C, h, w = feats.shape
        tokens = torch.cat([torch.zeros(1, C), feats.flatten(1).T])[None]  # a CLS slot first
        box, _, mask, sd, _, z = od.ncut(tokens, (h, w), (16, 16), (3, 16 * h, 16 * w),
                                         tau=0.2, eps=1e-5)  # fmt: skip
        cases.append({"features": feats, "box": torch.tensor([float(b) for b in box]),
                      "mask": torch.from_numpy(mask).bool(), "seed": int(sd),
                      "z": torch.from_numpy(z.copy())})  # fmt: skip
    return cases


def pos_embed_fixture(vits):
    torch.manual_seed(0)
    model = vits.vit_small(patch_size=16)
    with torch.no_grad():
        model.pos_embed.normal_(0, 0.02)
    out = {"pos_embed": model.pos_embed.detach().clone(), "grids": [], "interpolated": []}
    for rows, cols in ((10, 15), (14, 9)):
        x = torch.zeros(1, 1 + rows * cols, model.embed_dim)
        with torch.no_grad():
            out["interpolated"].append(model.interpolate_pos_encoding(x, 16 * rows, 16 * cols))
        out["grids"].append(torch.tensor([rows, cols]))
    return out


def deterministic_weights(name: str, shape) -> torch.Tensor:
    """A parameter's value from its name and shape alone (float64): norm weights near 1,
    biases and embeddings small, weights scaled by fan-in. Used on both sides."""
    seed = sum((i + 1) * ord(c) for i, c in enumerate(name)) % (2**31)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "bias":
        return 0.02 * x
    if len(shape) == 1:  # LayerNorm / BatchNorm weights
        return 1 + 0.1 * x
    if leaf in ("pos_embed", "cls_token"):
        return 0.02 * x
    fan_in = max(1, int(torch.tensor(shape[1:]).prod()))
    return x / fan_in**0.5


MODEL_PARAMS = ["net.patch_embed.proj.weight", "net.pos_embed", "net.blocks.0.attn.qkv.weight",
                "net.blocks.11.attn.qkv.weight", "net.blocks.11.norm1.weight",
                "net.blocks.11.attn.qkv.bias", "head2d_proj.mlp.0.weight",
                "head2d_proj.mlp.1.weight", "head2d_pred.mlp.3.weight"]  # fmt: skip


def sample(t: torch.Tensor, count: int = 256) -> torch.Tensor:
    """``count`` entries of ``t`` at fixed positions (all of a small ``t``), and its norm last:
    enough to compare a large gradient without storing it."""
    flat = t.detach().flatten()
    if flat.numel() > count:
        idx = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(3))[:count]
        flat = flat[idx.sort().values]
    return torch.cat([flat, t.detach().norm().reshape(1)])


def model_inputs(batch=24, size=64):
    g = torch.Generator().manual_seed(5)
    x1 = torch.randn(batch, 3, size, size, generator=g, dtype=torch.float64)
    x2 = torch.randn(batch, 3, size, size, generator=g, dtype=torch.float64)
    lo = 0.3 * torch.rand(batch, 2, generator=g, dtype=torch.float64)
    hi = 0.7 + 0.3 * torch.rand(batch, 2, generator=g, dtype=torch.float64)
    box1 = torch.cat([lo, hi], 1)  # x1, y1, x2, y2 in [0, 1]
    box2 = torch.cat([1 - hi, 1 - lo], 1)
    flips = torch.rand(2, batch, generator=g) < 0.5
    return x1, x2, box1, box2, flips


def model_fixture(module, vits, LARS):
    from network.head import ProjectionHead2d

    torch.manual_seed(0)
    model = module.EIGEN.__new__(module.EIGEN)
    torch.nn.Module.__init__(model)
    model.net = vits.vit_small(patch_size=16)
    model.head2d_proj = ProjectionHead2d(in_dim=384, bottleneck_dim=256, hidden_dim=384, nlayers=2)
    model.head2d_pred = ProjectionHead2d(in_dim=256, bottleneck_dim=256, hidden_dim=384, nlayers=2)
    model.patch_size, model.arch, model.device = 16, "vit_small", "cpu"
    model = model.double().train()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(deterministic_weights(name, tuple(p.shape)))
    x1, x2, box1, box2, flips = model_inputs()
    args = types.SimpleNamespace(local_rank=-1, loss_eigtype="lossall", loss_crit="BCE",
                                 image_size=64, laplacian="ours", tau=0.0)  # fmt: skip
    z2 = []
    get = module.get_eigenvectors

    def recording(*a, **k):
        out = get(*a, **k)
        z2.append(out[1][:, :, 1].detach().clone())
        return out

    module.get_eigenvectors = recording
    try:
        with float64_without_gpu():
            loss = model(x1, x2, [box1, box2], [flips[0].tolist(), flips[1].tolist()], args=args,
                         itr=1, threshold=0.5, weight=0.05)  # fmt: skip
            loss.backward()
    finally:
        module.get_eigenvectors = get
    named = dict(model.named_parameters())
    grads = {n: sample(named[n].grad) for n in MODEL_PARAMS}
    # their grouping and LARS, one step at lr 0.1
    bn = [v for n, v in named.items() if "bn" in n or "bias" in n]
    rest = [v for n, v in named.items() if not ("bn" in n or "bias" in n)]
    opt = LARS(torch.optim.SGD([{"params": bn, "weight_decay": 0, "ignore": True},
                                {"params": rest, "weight_decay": 5e-4, "ignore": False}],
                               lr=0.1, momentum=0.9, weight_decay=5e-4), eps=0.0)  # fmt: skip
    opt.step()
    after = {n: sample(named[n].detach()) for n in MODEL_PARAMS}
    # recorded order: online 1, target 2, target 1, online 2 -> online 1, 2, target 1, 2
    return {"loss": loss.detach(), "grads": grads, "after": after,
            "z2": torch.cat([z2[0], z2[3], z2[2], z2[1]])}  # fmt: skip


def main(root: str) -> None:
    root = Path(root).resolve()
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()  # fmt: skip
    if head and head != COMMIT:
        sys.exit(f"{root} is at {head}; check out {COMMIT} first")
    sys.path.insert(0, str(root))
    sys.modules.setdefault("wandb", types.SimpleNamespace(log=lambda *a, **k: None))
    cwd = os.getcwd()
    os.chdir(tempfile.mkdtemp())  # their measure.py opens a log folder where it is imported
    import measure

    os.chdir(cwd)
    sys.path.insert(0, str(root / "TokenCut"))
    import object_discovery
    from network import eigen_pred_iou, vision_transformer
    from util.LARS import LARS

    fixtures = {
        "commit": COMMIT,
        "torch": str(torch.__version__),
        "lars": lars_fixture(LARS),
        "invaug": invaug_fixture(eigen_pred_iou),
        "loss": loss_fixture(eigen_pred_iou),
        "saliency": saliency_fixture(measure),
        "tokencut": tokencut_fixture(object_discovery),
        "pos_embed": pos_embed_fixture(vision_transformer),
        "model": model_fixture(eigen_pred_iou, vision_transformer, LARS),
    }
    torch.save(fixtures, OUT)
    print(f"wrote {OUT} (loss {fixtures['loss']['loss'].item():.10f})")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
