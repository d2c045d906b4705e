"""The recipe against the authors' code (csyanbin/DiffNCuts at b34d38a) on identical inputs.

Their outputs are fixtures made once by tests/data/authors/make_fixtures.py from their
functions (their code is not part of this repository); see that script for what each is.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("torchvision")

FIXTURES = torch.load(Path(__file__).parent / "data/authors/fixtures.pt", weights_only=True)


def test_fixtures_come_from_the_pinned_commit():
    assert FIXTURES["commit"] == "b34d38abae653808825eb529ac3c3efd56db7593"


def test_lars_step_equals_the_authors():
    from diffeig.dncut.train.optim import LARS, authors_param_groups

    fx = FIXTURES["lars"]
    module = torch.nn.Module()
    params = {}
    for name, t in zip(fx["names"], fx["init"]):
        params[name] = torch.nn.Parameter(t.clone())
    # named exactly as in the fixture, so the grouping rule sees the same names
    holder = torch.nn.ParameterDict({n.replace(".", "__"): p for n, p in params.items()})
    module.named_parameters = lambda: iter(params.items())  # the fixture's names
    groups = authors_param_groups(module, fx["weight_decay"])
    opt = LARS(groups, lr=fx["lr"], momentum=fx["momentum"], trust_coeff=fx["trust_coeff"])
    for grads, after in zip(fx["grads"], fx["after"]):
        for p, g in zip(params.values(), grads):
            p.grad = g.clone()
        opt.step()
        for name, p, want in zip(fx["names"], params.values(), after):
            torch.testing.assert_close(p.detach(), want, rtol=1e-13, atol=1e-15, msg=name)
    assert len(holder) == len(fx["names"])


def test_timm_lars_is_not_the_authors():
    """Why the recipe has its own LARS: timm's ratio and grouping move the first step."""
    from timm.optim import Lars

    fx = FIXTURES["lars"]
    params = [torch.nn.Parameter(t.clone()) for t in fx["init"]]
    plain = [p for n, p in zip(fx["names"], params) if "bn" in n or "bias" in n]
    rest = [p for n, p in zip(fx["names"], params) if not ("bn" in n or "bias" in n)]
    opt = Lars(
        [
            {"params": rest, "weight_decay": fx["weight_decay"]},
            {"params": plain, "weight_decay": 0},
        ],
        lr=fx["lr"],
        momentum=fx["momentum"],
        trust_coeff=fx["trust_coeff"],
        eps=0.0,
    )
    for p, g in zip(params, fx["grads"][0]):
        p.grad = g.clone()
    opt.step()
    moved = [(p.detach() - i).norm() / (a - i).norm() for p, i, a in
             zip(params, fx["init"], fx["after"][0])]  # fmt: skip
    assert max(abs(float(m) - 1) for m in moved) > 1e-4


def test_alignment_equals_invaug():
    from diffeig.dncut.train.model import align

    fx = FIXTURES["invaug"]
    out = align(fx["x"], fx["coords"], fx["flags"])
    torch.testing.assert_close(out, fx["out"], rtol=0, atol=1e-14)


def use_authors_signs(monkeypatch, theirs):
    """Sign z2 of every graph of the next NCut call as the authors' ``theirs`` (z2 per
    graph, (B, N)); the trivial vector keeps its rule."""
    from diffeig.ncut import _common

    rule = _common.sign_flips

    def authors_sign(Z, how):
        s = rule(Z, how)
        agree = torch.where((Z[..., 1] * theirs).sum(-1) < 0, -1.0, 1.0).to(Z.dtype)
        return torch.cat([s[..., :1], agree[..., None, None]], -1)

    monkeypatch.setattr(_common, "sign_flips", authors_sign)


def our_loss(maps, monkeypatch, theirs):
    """Our objective on the four aligned maps, z2 signed as the authors' code signed it.

    With ``D - W``, z2 is orthogonal to the constant vector, so its sum, which both codes'
    "sum >= 0" rule reads, is rounding noise (|sum| < 1e-12 here): each code's sign is
    decided by the last bits of its own eigensolver run (the two codes agree on 57 of these
    96 graphs). The comparison takes the authors' signs, and compares everything else.
    """
    from diffeig.dncut.train.model import DNCut, NCutOptions, ncut_masks

    use_authors_signs(monkeypatch, theirs)
    model = DNCut.__new__(DNCut)
    torch.nn.Module.__init__(model)
    model.alpha, model.iou_threshold, model.min_kept, model.threshold_step = 0.05, 0.5, 20, 0.05
    masks, z2 = ncut_masks(torch.cat(maps), NCutOptions())
    return model.objective(masks)["loss"], z2


def test_training_objective_equals_the_authors(monkeypatch):
    """Loss and d(loss)/d(aligned maps), float64, the authors' defaults everywhere: heads'
    outputs aligned, raw dot-product affinity (tau 0, eps 1e-6), D - W, float64 eigh, the
    sigmoid mask (T = 0.05), the IoU filter, BCE and the three regularizers (weight 0.05)."""
    fx = FIXTURES["loss"]
    maps = [m.clone().requires_grad_() for m in fx["maps"]]
    theirs = fx["z2"]
    loss, z2 = our_loss(maps, monkeypatch, theirs)
    assert z2.flatten(1).sum(-1).abs().max() < 1e-12  # the sign rule reads noise
    torch.testing.assert_close(z2.detach().flatten(1), theirs, rtol=0, atol=1e-12)
    loss.backward()
    torch.testing.assert_close(loss.detach(), fx["loss"], rtol=1e-6, atol=0)
    for m, want in zip(maps[:2], fx["grads"][:2]):  # online maps
        torch.testing.assert_close(m.grad, want, rtol=0, atol=1e-6 * want.abs().max())
    # the target branch is detached in both codes
    assert fx["grads"][2] is None and fx["grads"][3] is None
    assert not maps[2].grad.any() and not maps[3].grad.any()


def test_saliency_metrics_equal_the_authors_measure():
    """Max F-beta, IoU and accuracy of 8-bit maps against ground truths with grey edges,
    as their measure.py computes them (grey pixels count fractionally in precision and
    recall; > 0.5 for IoU and accuracy)."""
    from diffeig.dncut.eval import metrics

    fx = FIXTURES["saliency"]
    per_image = [
        metrics.saliency_scores(p.float() / 255, g.float() / 255)
        for p, g in zip(fx["preds"], fx["gts"])
    ]
    assert any(0 < v < 255 for g in fx["gts"] for v in g.unique().tolist())  # grey edges
    s = metrics.summarize_saliency(per_image)
    # theirs accumulates in float32
    assert s["max_f_beta"] == pytest.approx(fx["max_f"], rel=1e-6)
    assert s["iou"] == pytest.approx(fx["iou"], rel=1e-6)
    assert s["accuracy"] == pytest.approx(fx["accuracy"], rel=1e-7)
    # what a binarized ground truth (the old reading) would have given instead
    hard = [
        metrics.saliency_scores(p.float() / 255, g > 127) for p, g in zip(fx["preds"], fx["gts"])
    ]
    assert metrics.summarize_saliency(hard)["max_f_beta"] != pytest.approx(fx["max_f"], rel=1e-4)


def test_saliency_input_and_map_are_the_authors():
    """The image is resized as a normalized tensor by F.interpolate to the nearest multiple
    of the patch, and the map is evaluated as the 8-bit PNG they save."""
    from PIL import Image

    from diffeig.dncut.eval import metrics
    from diffeig.dncut.eval.features import resize_to_patch, to_tensor

    image = Image.open(Path(__file__).parent / "data/quokka.jpg").convert("RGB")
    x = resize_to_patch(image, 16)
    H, W = image.height, image.width
    ref = torch.nn.functional.interpolate(
        to_tensor(image)[None],
        size=(int(round(H / 16)) * 16, int(round(W / 16)) * 16),
        mode="bilinear",
        align_corners=False,
    )[0]
    assert torch.equal(x, ref)
    soft = torch.tensor([0.0, 0.5 / 255, 1.5 / 255, 0.2, 1.0])
    assert (metrics.to_8bit(soft) * 255).tolist() == pytest.approx([0, 0, 2, 51, 255])


def test_tokencut_box_component_and_seed_as_the_authors():
    """Their TokenCut on 14 feature maps (7 with exactly tied tokens): the same box and
    component on every one. The seed: theirs is the first entry *bitwise* equal to max |z2|,
    and which of the tied entries come out bitwise equal is their solver's rounding (on
    these maps their seed is the first of the ties on 5 of 14); ours is the first of the
    entries tied to 1e-9, the same seed whenever theirs came out so, and one that does not
    depend on the solver. Tied seeds lie in one component here, so the boxes agree."""
    from diffeig.dncut.eval import postprocess

    for case in FIXTURES["tokencut"]:
        f = case["features"]
        _, h, w = f.shape
        ours = postprocess.tokencut(f, patch_size=16, image_size=(16 * h, 16 * w))
        assert ours["box"].tolist() == case["box"].tolist()
        assert torch.equal(ours["mask"], case["mask"])
        z = case["z"].flatten().abs()
        tied = (z >= z.max() * (1 - 1e-9)).nonzero().flatten()
        seed = ours["seed"][0] * w + ours["seed"][1]
        assert seed == int(tied[0]) and case["seed"] in tied.tolist()
        exact = (z == z.max()).nonzero().flatten()
        if int(exact[0]) == int(tied[0]):  # their first exact tie is the first near tie
            assert seed == case["seed"]


def test_position_embeddings_are_interpolated_as_dino():
    """For a grid other than the checkpoint's, our ViT adds the position embeddings that
    DINO's interpolate_pos_encoding (the authors' ViT) computes; timm's own resampling
    differs by up to 1e-2 there."""
    pytest.importorskip("timm")
    from timm.layers import resample_abs_pos_embed

    from diffeig.dncut.backbone import create_vit, dino_pos_embed

    fx = FIXTURES["pos_embed"]
    vit = create_vit("vit_small_patch16").model
    with torch.no_grad():
        vit.pos_embed.copy_(fx["pos_embed"])
        vit.cls_token.zero_()
    for grid, want in zip(fx["grids"], fx["interpolated"]):
        rows, cols = grid.tolist()
        x = torch.zeros(1, rows, cols, vit.embed_dim)
        with torch.no_grad():
            got = dino_pos_embed(vit.eval(), x)  # zero tokens: the embeddings themselves
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        timm_way = resample_abs_pos_embed(fx["pos_embed"], [rows, cols], num_prefix_tokens=1)
        assert (timm_way - want).abs().max() > 1e-4


def _authors_module():
    import importlib.util

    path = Path(__file__).parent / "data/authors/make_fixtures.py"
    spec = importlib.util.spec_from_file_location("make_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_whole_training_step_equals_the_authors(monkeypatch):
    """Their EIGEN.forward and LARS step against ours, end to end, float64: the same
    ViT-S/16 and heads (every weight a function of its name), the same two views, boxes
    and flips; z2 signed as theirs (see above). Loss, d(loss)/d(parameters) from the keys'
    projection down to the patch embedding, and one LARS step's new values, to 1e-6."""
    pytest.importorskip("timm")
    from diffeig.dncut.backbone import create_vit
    from diffeig.dncut.train.model import DNCut
    from diffeig.dncut.train.optim import LARS, authors_param_groups

    fx, gen = FIXTURES["model"], _authors_module()

    def theirs(name):
        if name.startswith("backbone.model."):
            return "net." + name[len("backbone.model.") :]
        head, rest = name.split(".", 1)
        return {"projector": "head2d_proj.mlp.", "predictor": "head2d_pred.mlp."}[head] + rest

    model = DNCut(create_vit("vit_small_patch16")).double().train()
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in named.items():
            p.copy_(gen.deterministic_weights(theirs(name), tuple(p.shape)))
    x1, x2, box1, box2, flips = gen.model_inputs()
    batch = dict(view1=x1, view2=x2, box1=box1, box2=box2, flip1=flips[0], flip2=flips[1])

    use_authors_signs(monkeypatch, fx["z2"])
    out = model(batch)
    torch.testing.assert_close(out["loss"].detach(), fx["loss"], rtol=1e-6, atol=0)
    out["loss"].backward()
    ours = {theirs(n): p for n, p in named.items()}
    for name, want in fx["grads"].items():
        got = gen.sample(ours[name].grad)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6 * want[-1] + 1e-12, msg=name)
    opt = LARS(authors_param_groups(model, 5e-4), lr=0.1, momentum=0.9, trust_coeff=1e-3)
    opt.step()
    for name, want in fx["after"].items():
        got = gen.sample(ours[name])
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6 * want[-1], msg=name)
