"""Perturbation guidance (pag, seg, slg, sag) on the shipped DiT, and autoguidance.

The perturbed branch is checked against the network run with a plain PyTorch forward hook that
computes the perturbation by hand (identity attention = the value projection passed through the
output projection; a skipped block = its input; SEG with an infinite blur = attention of the mean
query), independent of the module swapping in solverzoo.perturb. Float64, tolerance 1e-12
(round-off between a sub-batch and the whole batch)."""

import math

import pytest
import torch

import solverzoo as sz
from solverzoo.models import weights
from solverzoo.models.nets import DiT
from solverzoo.perturb import PerturbError

TOL = 1e-12


@pytest.fixture(scope="module")
def dit():
    path = weights.resolve("shapes-dit-flow")
    net = weights.load_into(DiT(**weights.read_meta(path)["config"]["net"]), path).double()
    model = sz.Model(net, "velocity", sz.get_schedule("flow"), time_input="t1000")
    g = torch.Generator().manual_seed(0)

    def cond(b):
        return {"tokens": torch.randn(2, 6, 384, generator=g, dtype=torch.float64),
                "mask": torch.ones(2, 6, dtype=torch.bool), "pooled": torch.randn(2, 384, generator=g, dtype=torch.float64)}

    conds = {"cond": cond(0), "uncond": cond(1)}
    x = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    return model, conds, x, torch.tensor(0.6, dtype=torch.float64)


def _hooked(model, cond, x, t, module, fn):
    h = module.register_forward_hook(lambda mod, args, out: fn(mod, args, out))
    try:
        return model.predict(x, t, cond)
    finally:
        h.remove()


def _identity_attn(attn, args, out):
    hidden = attn.out.in_features
    return attn.out(attn.kv(args[0])[..., hidden:])  # v of every head, concatenated, through the output projection


def _mean_query_attn(attn, args, out):
    inp = args[0]
    B, N, D = inp.shape
    q = attn.q(inp).reshape(B, N, attn.heads, -1).transpose(1, 2).mean(dim=2, keepdim=True)
    k, v = attn.kv(inp).reshape(B, N, 2, attn.heads, -1).permute(2, 0, 3, 1, 4)
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return attn.out((w @ v).expand(B, attn.heads, N, -1).transpose(1, 2).reshape(B, N, D))


@pytest.mark.parametrize("name,opts,target,fn", [
    ("pag", {"layers": (1, 4)}, "attn", _identity_attn),
    ("pag", {}, "attn", _identity_attn),
    ("seg", {"layers": (2,)}, "attn", _mean_query_attn),
    ("slg", {"layers": (3,)}, "block", lambda blk, args, out: args[0]),
])
def test_perturbed_branch_equals_hand_computed_perturbation(dit, name, opts, target, fn):
    model, conds, x, t = dit
    g = sz.GuidedDenoiser(model, sz.get_guidance(name, **opts), conds)
    with torch.no_grad():
        preds = g.branch_predictions(x, t)
        net = model.net
        layers = opts.get("layers", (len(net.blocks) // 2,))
        handles = [(net.blocks[i].attn if target == "attn" else net.blocks[i]).register_forward_hook(
            lambda mod, args, out: fn(mod, args, out)) for i in layers]
        try:
            want = model.predict(x, t, conds["cond"])
        finally:
            for h in handles:
                h.remove()
        plain = model.predict(x, t, conds["cond"])
    err = float((preds["perturbed"].eps - want.eps).abs().max())
    assert err < TOL, f"{name}: perturbed branch differs from the hand-computed perturbation by {err:.3e}"
    assert float((preds["perturbed"].eps - plain.eps).abs().max()) > 1e-3  # the perturbation changes the output
    assert float((preds["cond"].eps - plain.eps).abs().max()) < TOL  # the other rows are not perturbed


@pytest.mark.parametrize("name,opts", [("pag", {"pag_scale": 0.0}), ("seg", {"seg_scale": 0.0}), ("slg", {"slg_scale": 0.0})])
def test_zero_perturbation_scale_is_cfg_bit_for_bit(dit, name, opts):
    model, conds, x, _ = dit
    grid = sz.get_grid("flow_shift")(model.schedule, 4)
    base = sz.sample("euler", sz.GuidedDenoiser(model, sz.get_guidance("cfg", scale=3.0), conds), x.clone(), grid)
    res = sz.sample("euler", sz.GuidedDenoiser(model, sz.get_guidance(name, scale=3.0, **opts), conds), x.clone(), grid)
    assert torch.equal(res.x, base.x) and res.nfe == base.nfe == 8
    full = sz.sample("euler", sz.GuidedDenoiser(model, sz.get_guidance(name, scale=3.0), conds), x.clone(), grid)
    assert full.nfe == 12 and float((full.x - base.x).abs().max()) > 1e-4


def test_perturbed_guidance_formula(dit):
    model, conds, x, t = dit
    g = sz.GuidedDenoiser(model, sz.get_guidance("pag", scale=2.5, pag_scale=1.5), conds)
    with torch.no_grad():
        p, out = g.branch_predictions(x, t), g(x, t)
    c, u, q = p["cond"], p["uncond"], p["perturbed"]
    torch.testing.assert_close(out.eps, u.eps + 2.5 * (c.eps - u.eps) + 1.5 * (c.eps - q.eps), rtol=0, atol=1e-12)


def test_sag_three_evaluations_and_zero_scale_is_cfg(dit):
    model, conds, x, t = dit
    g = sz.GuidedDenoiser(model, sz.get_guidance("sag", scale=3.0, sag_scale=0.0), conds)
    cfg = sz.GuidedDenoiser(model, sz.get_guidance("cfg", scale=3.0), conds)
    with torch.no_grad():
        torch.testing.assert_close(g(x, t).eps, cfg(x, t).eps, rtol=0, atol=1e-12)
        preds = g.branch_predictions(x, t)
    assert float((preds["degraded"].eps - preds["uncond"].eps).abs().max()) > 1e-4  # the degraded input changed
    grid = sz.get_grid("flow_shift")(model.schedule, 3)
    res = sz.sample("euler", sz.GuidedDenoiser(model, sz.get_guidance("sag"), conds), x, grid)
    assert res.nfe == 9 and torch.isfinite(res.x).all()


def test_clear_errors(dit, gmm):
    model, conds, x, t = dit
    with pytest.raises(PerturbError, match="layers \\[9\\] out of range.*6 blocks"):
        sz.GuidedDenoiser(model, sz.get_guidance("pag", layers=(9,)), conds)(x, t)
    plain = gmm.model(sz.get_schedule("vp"))
    gc = sz.branch_conds(gmm.conditioner(), [0, 1])
    with pytest.raises(PerturbError, match="perturb_spec"):
        sz.GuidedDenoiser(plain, sz.get_guidance("slg"), gc)(torch.randn(2, 4), torch.tensor(0.5))


def test_diffusers_dit_pag_identity_attention():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    net = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=3,
                                          sample_size=8, patch_size=2, num_embeds_ada_norm=10).double().eval()

    def call(x, t, label):
        return net(x, timestep=t, class_labels=label).sample[:, :4]

    call.module = net  # a wrapper exposes the network as .module
    model = sz.Model(call, "epsilon", sz.get_schedule("vp"), time_input="t1000")
    conds = {"cond": {"label": torch.tensor([1, 2])}, "uncond": {"label": torch.tensor([3, 3])}}
    x, t = torch.randn(2, 4, 8, 8, dtype=torch.float64), torch.tensor(0.4, dtype=torch.float64)
    with torch.no_grad():
        got = sz.GuidedDenoiser(model, sz.get_guidance("pag", layers=(1,)), conds).branch_predictions(x, t)["perturbed"]
        attn = net.transformer_blocks[1].attn1
        want = _hooked(model, conds["cond"], x, t, attn, lambda m, a, o: m.to_out[0](m.to_v(a[0])))
    assert float((got.eps - want.eps).abs().max()) < TOL


# -- autoguidance --------------------------------------------------------------------------------
def test_autoguidance_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="weak checkpoint .* is missing.*solverzoo train dit_flow"):
        sz.get_guidance("autoguidance", weak=str(tmp_path / "nope.safetensors"))
    g = sz.get_guidance("autoguidance")  # the default weak DiT ships (solverzoo/models/weights/shapes-dit-flow-weak.*)
    assert g.weak == "shapes-dit-flow-weak" and g._path is not None and g._path.is_file()


def test_autoguidance_formula_with_a_weaker_model(gmm):
    """The weak model: the same mixture with components twice as wide (a blurrier density)."""
    from solverzoo.testbeds import GaussianMixture

    sched = sz.get_schedule("vp")
    weak = GaussianMixture(gmm.means, gmm.stds * 2.0, gmm.weights, gmm.labels).model(sched)
    main = gmm.model(sched)
    conds = sz.branch_conds(gmm.conditioner(), [0, 1, 2])
    g = sz.GuidedDenoiser(main, sz.get_guidance("autoguidance", scale=2.0, weak=weak), conds)
    x, t = torch.randn(3, 4, dtype=torch.float64), torch.tensor(0.4, dtype=torch.float64)
    c, w = main.predict(x, t, conds["cond"]), weak.predict(x, t, conds["cond"])
    out = g(x, t)
    torch.testing.assert_close(out.x0, w.x0 + 2.0 * (c.x0 - w.x0), rtol=0, atol=1e-12)
    assert g.evals_per_call == 2 and list(g.conds) == ["cond"]
    res = sz.sample("dpmpp_2m", g, torch.randn(3, 4), sz.get_grid("logsnr")(sched, 5))
    assert res.nfe == 10
