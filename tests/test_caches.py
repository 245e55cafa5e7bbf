"""Caches: exactness when they never skip, real savings when they do, per-row decisions
(batch-size independence), state that lives for one sampling call, diffusers transformers,
networks that declare their own block stack (attribute or plugin), and clear errors. Checked
against the uncached network (the independent reference)."""
import dataclasses
import subprocess
import sys
import types

import diffusers
import pytest
import torch
from torch import nn

import solverzoo as sz
from solverzoo.caching import CacheError, StackSpec, estimate_flops, find_stack
from solverzoo.models.adapters import diffusers_model
from solverzoo.models.nets import DiT
from solverzoo_builtin.caches import TaylorSeer

NEVER_SKIP = {"teacache": {"threshold": 0.0}, "first_block": {"threshold": 0.0}, "taylorseer": {"interval": 1}}
SKIPPING = {"teacache": {"threshold": 0.3}, "first_block": {"threshold": 0.3}, "taylorseer": {"interval": 2}}


def _tiny_text_dit():
    torch.manual_seed(0)
    net = DiT(in_channels=4, input_size=8, patch=2, hidden=32, depth=4, heads=2, text_dim=16).eval()
    for p in net.parameters():  # adaLN-Zero starts as the identity: give the blocks something to do
        torch.nn.init.normal_(p, std=0.05)
    return net


def _guided(net, batch=4, scale=3.0):
    model = sz.Model(net, "velocity", sz.get_schedule("flow"), time_input="t1000")
    g = torch.Generator().manual_seed(3)
    cond = {"tokens": torch.randn(batch, 5, 16, generator=g), "mask": torch.ones(batch, 5, dtype=torch.bool),
            "pooled": torch.randn(batch, 16, generator=g)}
    null = {"tokens": torch.zeros(batch, 5, 16), "mask": torch.ones(batch, 5, dtype=torch.bool), "pooled": torch.zeros(batch, 16)}
    return sz.GuidedDenoiser(model, sz.get_guidance("cfg", scale=scale), {"cond": cond, "uncond": null}), model


def _run(den, model, solver="dpmpp_2m", steps=12, batch=4, **kw):
    grid = sz.get_grid("flow_shift")(model.schedule, steps, shift=2.0)
    x = sz.randn((batch, 4, 8, 8), sz.generators(range(batch)))
    with torch.no_grad():
        return sz.sample(solver, den, x, grid, generator=sz.generators([100 + i for i in range(batch)]), **kw)


@pytest.mark.parametrize("cache", sorted(NEVER_SKIP))
@pytest.mark.parametrize("solver", ["euler", "heun", "dpmpp_2m", "unipc", "euler_ancestral", "dpmpp_2m_sde"])
def test_a_cache_that_never_skips_is_bit_identical(cache, solver):
    den, model = _guided(_tiny_text_dit())
    base = _run(den, model, solver)
    res = _run(den, model, solver, cache=cache, cache_options=NEVER_SKIP[cache])
    assert torch.equal(res.x, base.x)
    assert res.nfe == base.nfe and res.backbone_evals == pytest.approx(base.nfe)
    assert base.backbone_evals == base.nfe and base.cache is None and res.cache["name"] == cache


@pytest.mark.parametrize("cache", sorted(SKIPPING))
def test_caches_save_evaluations_and_stay_close(cache):
    den, model = _guided(_tiny_text_dit())
    base = _run(den, model, steps=24)
    res = _run(den, model, steps=24, cache=cache, cache_options=SKIPPING[cache])
    assert res.nfe == base.nfe
    assert res.backbone_evals < 0.8 * base.nfe  # it skipped real work
    rel = float((res.x - base.x).norm() / base.x.norm())
    assert 0 < rel < 0.5, rel  # approximate, not garbage


def test_taylorseer_counts_exactly():
    # 12 steps of dpmpp_2m = 12 calls: calls 0, 1 (warm-up) then every 2nd from call 2 are full -> 2 + 5 = 7
    den, model = _guided(_tiny_text_dit())
    res = _run(den, model, steps=12, cache="taylorseer", cache_options={"interval": 2, "order": 1, "warmup": 2})
    assert res.backbone_evals == pytest.approx(7 * 2)  # two guidance branches per call


@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_taylorseer_forecast_is_exact_for_polynomials_of_its_order(order):
    coefs = torch.randn(order + 1, 3, 2, dtype=torch.float64)
    f = lambda t: sum(c * t[:, None, None] ** p for p, c in enumerate(coefs))  # noqa: E731
    ts = [torch.full((3,), v, dtype=torch.float64) for v in (0.9, 0.7, 0.45, 0.4)[: order + 1]]
    hist = [(t, (f(t),)) for t in ts]
    t = torch.full((3,), 0.2, dtype=torch.float64)
    torch.testing.assert_close(TaylorSeer._forecast(hist, t)[0], f(t), atol=1e-10, rtol=1e-10)


def test_decisions_are_per_row_so_samples_do_not_depend_on_the_batch():
    den4, model = _guided(_tiny_text_dit(), batch=4)
    full = _run(den4, model, batch=4, cache="teacache", cache_options={"threshold": 0.3}).x
    net = model.net
    for i in range(4):  # sample i alone, with its own conditioning
        g = torch.Generator().manual_seed(3)
        cond = {"tokens": torch.randn(4, 5, 16, generator=g)[i:i + 1], "mask": torch.ones(1, 5, dtype=torch.bool),
                "pooled": torch.randn(4, 16, generator=g)[i:i + 1]}
        null = {"tokens": torch.zeros(1, 5, 16), "mask": torch.ones(1, 5, dtype=torch.bool), "pooled": torch.zeros(1, 16)}
        den1 = sz.GuidedDenoiser(model, sz.get_guidance("cfg", scale=3.0), {"cond": cond, "uncond": null})
        grid = sz.get_grid("flow_shift")(model.schedule, 12, shift=2.0)
        x = sz.randn((1, 4, 8, 8), sz.generators([i]))
        with torch.no_grad():
            one = sz.sample("dpmpp_2m", den1, x, grid, cache="teacache", cache_options={"threshold": 0.3}).x
        torch.testing.assert_close(one[0], full[i], atol=1e-5, rtol=1e-5)  # batched vs single matmul rounding only
    assert model.net is net


def test_cache_state_lives_for_one_call():
    den, model = _guided(_tiny_text_dit())
    a = _run(den, model, cache="first_block", cache_options={"threshold": 0.3})
    b = _run(den, model, cache="first_block", cache_options={"threshold": 0.3})
    assert torch.equal(a.x, b.x) and a.backbone_evals == b.backbone_evals
    assert isinstance(model.net.blocks, torch.nn.ModuleList)  # the block list is restored after the call


@pytest.mark.parametrize("cache", sorted(SKIPPING))
def test_caches_drive_diffusers_transformers(cache):
    torch.manual_seed(0)
    sd3 = diffusers.SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=3, attention_head_dim=8,
                                          num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                                          pooled_projection_dim=8, out_channels=4).eval()
    dit = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                          num_layers=3, sample_size=8, patch_size=2, num_embeds_ada_norm=10).eval()
    for tr in (sd3, dit):
        for p in tr.parameters():
            torch.nn.init.normal_(p, std=0.05)
    g = torch.Generator().manual_seed(1)
    cases = [
        (diffusers_model(sd3, diffusers.FlowMatchEulerDiscreteScheduler().config),
         {"encoder_hidden_states": torch.randn(2, 5, 16, generator=g), "pooled_projections": torch.randn(2, 8, generator=g)},
         "flow_shift"),
        (diffusers_model(dit, diffusers.DDIMScheduler().config), {"class_labels": torch.tensor([1, 2])}, "trailing"),
    ]
    for model, cond, grid_name in cases:
        grid = sz.get_grid(grid_name)(model.schedule, 16)
        x = torch.randn(2, 4, 8, 8, generator=g)
        with torch.no_grad():
            base = sz.sample("dpmpp_2m", model.denoiser(cond), x, grid)
            exact = sz.sample("dpmpp_2m", model.denoiser(cond), x, grid, cache=cache, cache_options=NEVER_SKIP[cache])
            fast = sz.sample("dpmpp_2m", model.denoiser(cond), x, grid, cache=cache, cache_options=SKIPPING[cache])
        torch.testing.assert_close(exact.x, base.x, atol=1e-6, rtol=0)  # (row subsets aside, the same ops)
        assert fast.backbone_evals < base.nfe and torch.isfinite(fast.x).all()


def test_flop_estimate_splits_blocks_from_the_rest():
    net = _tiny_text_dit()
    cond = {"tokens": torch.randn(1, 5, 16), "mask": torch.ones(1, 5, dtype=torch.bool), "pooled": torch.randn(1, 16)}
    f = estimate_flops(net, torch.randn(1, 4, 8, 8), torch.tensor([500.0]), cond)
    assert f["depth"] == 4 and 0 < 4 * f["block"] < f["full"]
    # one block: q, kv, out of self- and cross-attention, the MLP and the modulation (+ the attention products)
    h, n, L = 32, 16, 5
    lin = (2 * n * (h * h + h * 2 * h + h * h) + 2 * n * h * h + 2 * L * h * 2 * h + 2 * n * h * h + 2 * n * (h * 4 * h) * 2
           + 2 * h * 9 * h)
    att = 2 * (2 * n * n * h) + 2 * (2 * n * L * h)
    # torch's counter sees the linear layers; whether it counts the fused attention kernel depends on the backend
    assert f["block"] in (lin, lin + att)


def test_cache_errors_are_clear():
    from solverzoo.testbeds import GaussianMixture

    mix = GaussianMixture.default(dim=2, seed=0)
    model = mix.model(sz.get_schedule("vp"), "epsilon")
    grid = sz.get_grid("logsnr")(model.schedule, 4)
    with pytest.raises(CacheError, match="block stack"):
        sz.sample("euler", model.denoiser(), torch.randn(3, 2), grid, cache="teacache")
    den, model = _guided(_tiny_text_dit())
    with pytest.raises(TypeError, match="valid options"):
        _run(den, model, cache="teacache", cache_options={"treshold": 0.1})
    with pytest.raises(ValueError, match="threshold"):
        _run(den, model, cache="teacache", cache_options={"threshold": -1})
    with pytest.raises(sz.UnknownComponentError):
        _run(den, model, cache="teacash")
    with pytest.raises(ValueError, match="without a cache"):
        _run(den, model, cache_options={"threshold": 0.1})


def test_caches_are_listed_by_plugins(capsys):
    from solverzoo.cli import main

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "caches:" in out and all(name in out for name in ("teacache", "first_block", "taylorseer"))
    assert "optimised" in out


# -- networks that declare their own block stack ----------------------------------------------
class _TinyBlock(nn.Module):
    """adaLN-modulated MLP block: ``h + gate * mlp(norm(h) * (1 + scale) + shift)``."""

    def __init__(self, d: int):
        super().__init__()
        self.norm = nn.LayerNorm(d, elementwise_affine=False)
        self.ada = nn.Linear(d, 3 * d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def modulated(self, h, c):
        shift, scale, _ = self.ada(c).chunk(3, dim=-1)
        return self.norm(h) * (1 + scale[:, None]) + shift[:, None]

    def forward(self, h, c):
        gate = self.ada(c).chunk(3, dim=-1)[2]
        return h + gate[:, None] * self.mlp(self.modulated(h, c))


class _PlainTransformer(nn.Module):
    """A third party's transformer over (B, 4, 8, 8): tokens are pixels, blocks in ``.layers``."""

    def __init__(self, d: int = 16, depth: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.inp, self.out = nn.Linear(4, d), nn.Linear(d, 4)
        self.temb = nn.Sequential(nn.Linear(1, d), nn.SiLU(), nn.Linear(d, d))
        self.layers = nn.ModuleList(_TinyBlock(d) for _ in range(depth))
        for p in self.parameters():
            nn.init.normal_(p, std=0.2)

    def forward(self, x, t):
        B, C, H, W = x.shape
        h, c = self.inp(x.flatten(2).transpose(1, 2)), self.temb(t.float()[:, None])
        for blk in self.layers:
            h = blk(h, c)
        return self.out(h).transpose(1, 2).reshape(B, C, H, W)


_TINY_STACK = StackSpec("layers", streams=lambda a, k: (a[0],), call=lambda blk, a, k, s: (blk(s[0], *a[1:]),),
                        output=lambda s: s[0], indicator=lambda blk, a, k: blk.modulated(a[0], a[1]))


class _DeclaringTransformer(_PlainTransformer):
    cache_stack = _TINY_STACK


class _DeclaringByMethod(_PlainTransformer):
    def cache_stack(self):
        return _TINY_STACK


def _sample_plain(net, steps=10, **kw):
    model = sz.Model(net, "velocity", sz.get_schedule("flow"))
    grid = sz.get_grid("flow_shift")(model.schedule, steps, shift=2.0)
    x = sz.randn((3, 4, 8, 8), sz.generators(range(3)))
    with torch.no_grad():
        return sz.sample("dpmpp_2m", model.denoiser(), x, grid, **kw)


@pytest.mark.parametrize("cls", [_DeclaringTransformer, _DeclaringByMethod])
@pytest.mark.parametrize("cache", sorted(NEVER_SKIP))
def test_a_network_declaring_cache_stack_is_cacheable_without_changing_solverzoo(cls, cache):
    net = cls().eval()
    assert find_stack(net) == (net, _TINY_STACK)
    base = _sample_plain(net)
    exact = _sample_plain(net, cache=cache, cache_options=NEVER_SKIP[cache])
    assert torch.equal(exact.x, base.x) and exact.backbone_evals == pytest.approx(base.nfe)
    fast = _sample_plain(net, steps=20, cache=cache, cache_options=SKIPPING[cache])
    assert fast.backbone_evals < fast.nfe and torch.isfinite(fast.x).all()
    assert isinstance(net.layers, nn.ModuleList)


@pytest.fixture
def stack_plugin():
    """Registers a cache_stack for ``_PlainTransformer`` in-process, as a third-party plugin would."""

    @sz.hookimpl
    def register_cache_stacks(register):
        register(dataclasses.replace(_TINY_STACK, name="_PlainTransformer", description="test stack"))

    plugin = types.ModuleType("tiny_stack_plugin")
    plugin.register_cache_stacks = register_cache_stacks
    sz.registry.add_plugin(plugin, "tiny_stack_plugin", "tiny-stack-dist 1.0")
    try:
        yield
    finally:
        sz.registry.remove_plugin("tiny_stack_plugin")


def test_a_registered_stack_makes_a_class_and_its_subclasses_cacheable(stack_plugin):
    entry = sz.registry.entry("cache_stack", "_PlainTransformer")
    assert entry.origin == "tiny-stack-dist 1.0"
    net = _PlainTransformer().eval()
    module, spec = find_stack(sz.Model(net, "velocity", sz.get_schedule("flow")).net)
    assert module is net and spec is entry.obj
    base = _sample_plain(net)
    exact = _sample_plain(net, cache="teacache", cache_options=NEVER_SKIP["teacache"])
    assert torch.equal(exact.x, base.x)
    sub = type("Sub", (_PlainTransformer,), {})()  # found through the class's bases (MRO)
    assert find_stack(sub)[1] is entry.obj


def test_a_network_without_a_declared_stack_says_how_to_declare_one():
    net = _PlainTransformer()
    wrapper = types.SimpleNamespace(module=net)
    for obj in (net, wrapper):
        with pytest.raises(CacheError, match="_PlainTransformer|SimpleNamespace") as err:
            find_stack(obj)
        assert "cache_stack" in str(err.value) and "register_cache_stacks" in str(err.value)
    with pytest.raises(CacheError, match="block stack"):
        _sample_plain(net, cache="teacache")
    bad = type("Bad", (_PlainTransformer,), {"cache_stack": StackSpec("inp", *[_TINY_STACK.streams] * 4)})()
    with pytest.raises(CacheError, match=r"\.inp, which is not an nn\.ModuleList"):
        find_stack(bad)
    odd = type("Odd", (_PlainTransformer,), {"cache_stack": lambda self: "layers"})()
    with pytest.raises(CacheError, match="not a solverzoo.caching.StackSpec"):
        find_stack(odd)


def test_the_cache_contract_imports_no_models_and_no_diffusers():
    code = ("import sys, solverzoo.caching, solverzoo_builtin.cache_stacks\n"
            "bad = [m for m in sys.modules if m == 'diffusers' or m.startswith(('solverzoo.models', 'solverzoo.bench'))]\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_cache_stacks_are_listed_by_plugins(capsys):
    from solverzoo.cli import main

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "cache_stacks:" in out and "DiTTransformer2DModel" in out and "SD3Transformer2DModel" in out
