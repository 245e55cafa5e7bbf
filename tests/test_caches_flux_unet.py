"""Caches on the networks people use: FLUX (dual-stream then single-stream blocks, one chain for
every transformer cache) and diffusers UNets (DeepCache). Tiny random diffusers networks built
from config dicts, sampled through the zoo's sampler with the diffusers adapters; every check is
against the same network without a cache (the independent reference), with block evaluations
counted by hooks on the real blocks and FLOPs by torch's counter, not by the cache's own books."""
import math
import types

import diffusers
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import solverzoo as sz
from solverzoo.caching import CacheError, StackSpec, estimate_flops, find_stack
from solverzoo.models.adapters import diffusers_model
from solverzoo_builtin.deepcache import DeepCache, UNetSpec, refresh_schedule

B = 2  # samples; guided networks run 2 * B rows per call
STACK_NEVER = {"teacache": {"threshold": 0.0}, "first_block": {"threshold": 0.0}, "taylorseer": {"interval": 1}}
STACK_SKIP = {"teacache": {"threshold": 0.05}, "first_block": {"threshold": 0.1}, "taylorseer": {"interval": 2}}
UNET_NEVER = {"deepcache": {"interval": 1}}
UNET_SKIP = {"uniform": {"interval": 2}, "nonuniform": {"interval": 2, "uniform": False, "calls": 16, "center": 0.3}}


def _flux():
    torch.manual_seed(0)
    net = diffusers.FluxTransformer2DModel(patch_size=1, in_channels=8, num_layers=2, num_single_layers=3,
                                           attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                           pooled_projection_dim=8, axes_dims_rope=(2, 2, 4)).eval()
    for p in net.parameters():
        nn.init.normal_(p, std=0.05)
    model = diffusers_model(net, diffusers.FlowMatchEulerDiscreteScheduler().config)
    g = torch.Generator().manual_seed(1)
    ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1).reshape(1, 16, 3)
    pos = {"img_ids": ids.expand(B, -1, -1), "txt_ids": torch.zeros(B, 5, 3)}  # batched so guidance can stack them
    cond = {"encoder_hidden_states": torch.randn(B, 5, 16, generator=g), "pooled_projections": torch.randn(B, 8, generator=g),
            **pos}
    null = {"encoder_hidden_states": torch.zeros(B, 5, 16), "pooled_projections": torch.zeros(B, 8), **pos}
    den = sz.GuidedDenoiser(model, sz.get_guidance("cfg", scale=3.0), {"cond": cond, "uncond": null})
    return types.SimpleNamespace(net=net, model=model, den=den, shape=(B, 16, 8), grid=("flow_shift", {"shift": 2.0}), rows=2 * B)


def _unet():
    torch.manual_seed(0)
    net = diffusers.UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16, 16),
                                down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4,
                                attention_head_dim=4).eval()
    model = diffusers_model(net, diffusers.DDPMScheduler().config)
    return types.SimpleNamespace(net=net, model=model, den=model.denoiser({}), shape=(B, 3, 16, 16), grid=("trailing", {}),
                                 rows=B)


def _unet_cond():
    torch.manual_seed(0)
    net = diffusers.UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                         block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                         norm_num_groups=4, attention_head_dim=4).eval()
    model = diffusers_model(net, diffusers.DDPMScheduler(prediction_type="v_prediction").config)
    g = torch.Generator().manual_seed(2)
    cond, null = {"encoder_hidden_states": torch.randn(B, 5, 16, generator=g)}, {"encoder_hidden_states": torch.zeros(B, 5, 16)}
    den = sz.GuidedDenoiser(model, sz.get_guidance("cfg", scale=3.0), {"cond": cond, "uncond": null})
    return types.SimpleNamespace(net=net, model=model, den=den, shape=(B, 4, 8, 8), grid=("trailing", {}), rows=2 * B)


@pytest.fixture(scope="module")
def nets():
    return {"flux": _flux(), "unet": _unet(), "unet_cond": _unet_cond()}


def _sample(case, solver="dpmpp_2m", steps=10, **kw):
    name, opts = case.grid
    grid = sz.get_grid(name)(case.model.schedule, steps, **opts)
    x = sz.randn(case.shape, sz.generators(range(B)))
    with torch.no_grad():
        return sz.sample(solver, case.den, x, grid, generator=sz.generators([50 + i for i in range(B)]), **kw)


_BASE: dict = {}


def _base(nets, net, solver, steps=10):
    key = (net, solver, steps)
    if key not in _BASE:
        _BASE[key] = _sample(nets[net], solver, steps)
    return _BASE[key]


def test_every_registered_cache_is_covered_here():
    # a cache registered later must say how it attaches to FLUX or to the UNets (and be tested here)
    assert set(sz.registry.names("cache")) <= set(STACK_NEVER) | set(UNET_NEVER)
    assert {n for n in sz.registry.names("cache")
            if UNetSpec in getattr(sz.registry.get("cache", n), "layouts", ())} == set(UNET_NEVER)


# -- a cache that never skips is the network itself, bit for bit --------------------------------
CASES = ([("flux", c, o) for c, o in STACK_NEVER.items()]
         + [(n, c, o) for n in ("unet", "unet_cond") for c, o in UNET_NEVER.items()])


@pytest.mark.parametrize("solver", ["dpmpp_2m", "heun", "euler_ancestral"])
@pytest.mark.parametrize(("net", "cache", "options"), CASES)
def test_a_cache_that_never_skips_is_bit_identical(nets, net, cache, options, solver):
    base = _base(nets, net, solver)
    res = _sample(nets[net], solver, cache=cache, cache_options=options)
    assert torch.equal(res.x, base.x)
    assert res.nfe == base.nfe and res.backbone_evals == pytest.approx(base.nfe, rel=1e-12)
    assert res.cache["name"] == cache and base.cache is None


@pytest.mark.parametrize("options", [{"interval": 1, "branch": 1}, {"interval": 1, "branch": 2}, {"interval": 1, "branch": 3},
                                     {"interval": 1, "uniform": False, "calls": 10}])
def test_deepcache_at_interval_one_is_the_unet_exactly(nets, options):
    base = _base(nets, "unet", "dpmpp_2m")  # 3 down blocks and a middle block: branches 1 to 3
    res = _sample(nets["unet"], cache="deepcache", cache_options=options)
    assert torch.equal(res.x, base.x) and res.backbone_evals == pytest.approx(base.nfe, rel=1e-12)


# -- a cache that skips: it skips real blocks, and stays close ---------------------------------
def _rows_per_block(blocks):
    """Rows each real block processes, counted by pre-hooks on the blocks themselves."""
    seen = [0] * len(blocks)

    def hook(i):
        def count(mod, args, kwargs):
            h = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            seen[i] += h.shape[0]
        return count

    return seen, [b.register_forward_pre_hook(hook(i), with_kwargs=True) for i, b in enumerate(blocks)]


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def test_skipping_caches_on_flux_compute_fewer_blocks_and_stay_close(nets):
    # Tolerance: the discretisation error of this solve, |x(16 steps) - x(8 steps)| / |x(16 steps)|
    # (what halving the steps would change, for 50% of the compute). A cache that skips must stay
    # below it; measured 0.30x-0.57x of it here (8.1e-4), while dropping the skipped blocks' work gives O(1).
    flux = nets["flux"]
    base, half = _base(nets, "flux", "dpmpp_2m", 16), _base(nets, "flux", "dpmpp_2m", 8)
    tol = _rel(half.x, base.x)
    blocks = list(flux.net.transformer_blocks) + list(flux.net.single_transformer_blocks)
    for cache, options in STACK_SKIP.items():
        seen, handles = _rows_per_block(blocks)
        try:
            res = _sample(flux, steps=16, cache=cache, cache_options=options)
        finally:
            for h in handles:
                h.remove()
        computed = sum(seen) / (len(blocks) * B)  # full-network evaluations per sample, by the hooks
        assert res.backbone_evals == pytest.approx(computed, rel=1e-12), cache  # the reported fraction is what ran
        assert 0 < computed < 0.8 * base.nfe, (cache, computed)
        assert 0 < _rel(res.x, base.x) < tol, (cache, _rel(res.x, base.x), tol)
    assert all(isinstance(getattr(flux.net, a), nn.ModuleList) for a in ("transformer_blocks", "single_transformer_blocks"))


def test_taylorseer_on_flux_counts_exactly(nets):
    # 12 calls: calls 0 and 1 (warm-up), then every 2nd from call 2 run the 5 blocks: 7 full calls
    flux = nets["flux"]
    blocks = list(flux.net.transformer_blocks) + list(flux.net.single_transformer_blocks)
    seen, handles = _rows_per_block(blocks)
    try:
        res = _sample(flux, steps=12, cache="taylorseer", cache_options={"interval": 2, "order": 1, "warmup": 2})
    finally:
        for h in handles:
            h.remove()
    assert seen == [7 * flux.rows] * 5 and res.backbone_evals == pytest.approx(7 * 2)


def _block_flops_independently(case) -> list[float]:
    """FLOPs of each U-Net block in one uncached call, from the counter's per-module table."""
    name, opts = case.grid
    x = sz.randn((case.rows,) + case.shape[1:], sz.generators(range(case.rows)))
    t = torch.full((case.rows,), 500.0)
    cond = case.den.conds["cond"] if hasattr(case.den, "conds") else {}
    cond = {k: torch.cat([v, v]) for k, v in cond.items()}
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        case.model.net(x, t, **cond)
    table = {k.split(".", 1)[1]: sum(v.values()) for k, v in counter.get_flop_counts().items() if "." in k}
    n = len(case.net.down_blocks)
    return [table[f"down_blocks.{i}"] for i in range(n)] + [table["mid_block"]] + [table[f"up_blocks.{i}"] for i in range(n)]


@pytest.mark.parametrize("net", ["unet", "unet_cond"])
@pytest.mark.parametrize("schedule", sorted(UNET_SKIP))
def test_deepcache_skips_the_deep_blocks_and_stays_close(nets, net, schedule):
    # Tolerance: as for FLUX, the solve's own discretisation error (16 vs 8 steps: 3.4e-2 for the
    # UNet2DModel, 9.0e-2 for the UNet2DConditionModel here); DeepCache refreshing at every 2nd
    # call measures 0.08x-0.38x of it, for 68-74% of the block FLOPs.
    case, options = nets[net], UNET_SKIP[schedule]
    base, half = _base(nets, net, "dpmpp_2m", 16), _base(nets, net, "dpmpp_2m", 8)
    blocks = list(case.net.down_blocks) + [case.net.mid_block] + list(case.net.up_blocks)
    seen, handles = _rows_per_block(blocks)
    try:
        res = _sample(case, steps=16, cache="deepcache", cache_options=options)
    finally:
        for h in handles:
            h.remove()
    full = [k for k in range(16) if DeepCache(**options).refreshes(k)]
    assert len(full) == 8 and full[0] == 0 and (schedule == "uniform") == (full == list(range(0, 16, 2)))
    shallow = {0, len(blocks) - 1}  # branch 1: the first down block and the last up block run on every call
    assert seen == [case.rows * (16 if i in shallow else len(full)) for i in range(len(blocks))]
    flops = _block_flops_independently(case)  # reported work: the blocks' FLOPs, full and shallow calls
    share = sum(flops[i] for i in shallow) / sum(flops)
    expected = (len(full) + (16 - len(full)) * share) * case.rows / B
    assert res.backbone_evals == pytest.approx(expected, rel=1e-9) and res.backbone_evals < 0.8 * base.nfe
    assert 0 < _rel(res.x, base.x) < _rel(half.x, base.x), (_rel(res.x, base.x), _rel(half.x, base.x))


def test_deepcache_deeper_branch_runs_more_blocks(nets):
    case = nets["unet"]  # branch 2: down 0-1 and up 1-2 every call; down 2, mid, up 0 every 3rd
    blocks = list(case.net.down_blocks) + [case.net.mid_block] + list(case.net.up_blocks)
    seen, handles = _rows_per_block(blocks)
    try:
        res = _sample(case, steps=9, cache="deepcache", cache_options={"interval": 3, "branch": 2})
    finally:
        for h in handles:
            h.remove()
    assert seen == [B * 9, B * 9, B * 3, B * 3, B * 3, B * 9, B * 9]
    assert 3 < res.backbone_evals < 9


def test_refresh_schedule_is_the_papers_nonuniform_spacing():
    for calls, interval in [(50, 5), (16, 2), (12, 3), (7, 2), (1, 1), (20, 1)]:
        s = refresh_schedule(calls, interval, center=0.3, power=1.4)
        assert len(s) == math.ceil(calls / interval) and s[0] == 0 and s == sorted(set(s)) and s[-1] < calls
    s = refresh_schedule(50, 5, center=0.3, power=1.4)
    gaps = [b - a for a, b in zip(s, s[1:])]
    near = min(range(len(s)), key=lambda i: abs(s[i] - 15))
    assert min(gaps) == gaps[near] or min(gaps) == gaps[near - 1]  # densest at the centre (call 15 of 50)
    assert gaps[0] > min(gaps) and gaps[-1] > min(gaps)  # sparser at both ends
    assert refresh_schedule(20, 1) == list(range(20))


# -- FLOPs, the generic chain, and errors ------------------------------------------------------
def test_flop_estimates_for_flux_and_unets(nets):
    flux, unet = nets["flux"], nets["unet"]
    x = torch.randn(1, 16, 8)
    cond = {k: v[:1] for k, v in flux.den.conds["cond"].items()}
    f = estimate_flops(flux.model.net, x, torch.tensor([0.5]), cond)
    assert f["depth"] == 5 and 0 < 5 * f["block"] < f["full"]
    u = estimate_flops(unet.model.net, torch.randn(1, 3, 16, 16), torch.tensor([500.0]))
    one = types.SimpleNamespace(**{**vars(unet), "rows": 1})
    blocks = _block_flops_independently(one)
    assert u["depth"] == 7 and u["block"] * 7 == pytest.approx(sum(blocks), rel=1e-12) and u["full"] > sum(blocks)


class _PairBlock(nn.Module):
    """Carries image and context tokens as two streams, mixing them."""

    def __init__(self, d):
        super().__init__()
        self.img, self.ctx, self.mod = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def modulated(self, h, e):
        return h * (1 + self.mod(e)[:, None])

    def forward(self, h, c, e):
        m = self.modulated(h, e)
        mix = m.mean(1, keepdim=True) + c.mean(1, keepdim=True)
        return h + 0.5 * self.img(m + mix).tanh(), c + 0.5 * self.ctx(c + mix).tanh()


class _JointBlock(nn.Module):
    """Takes one stream: context and image tokens concatenated."""

    def __init__(self, d):
        super().__init__()
        self.lin, self.mod = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, z, e):
        return z + 0.5 * self.lin(z * (1 + self.mod(e)[:, None])).tanh()


def _joint_call(blk, args, kwargs, s):  # a joint block on the chain's (image, context) streams
    z = blk(torch.cat([s[1], s[0]], 1), args[2])
    return z[:, s[1].shape[1]:], z[:, : s[1].shape[1]]


_TWO_STAGE = StackSpec("pair", streams=lambda a, k: (a[0], a[1]), call=lambda blk, a, k, s: blk(s[0], s[1], a[2]),
                       output=lambda s: s, indicator=lambda blk, a, k: blk.modulated(a[0], a[2]),
                       then=(("joint", _joint_call),))


class _TwoStage(nn.Module):
    """Two dual-stream blocks, then three blocks over the concatenated stream (FLUX's shape, in small)."""

    cache_stack = _TWO_STAGE

    def __init__(self, d=8):
        super().__init__()
        torch.manual_seed(0)
        self.inp, self.temb, self.out = nn.Linear(4, d), nn.Linear(1, d), nn.Linear(d, 4)
        self.ctx = nn.Parameter(torch.randn(1, 3, d))
        self.pair = nn.ModuleList(_PairBlock(d) for _ in range(2))
        self.joint = nn.ModuleList(_JointBlock(d) for _ in range(3))

    def forward(self, x, t):
        h, e = self.inp(x.flatten(2).transpose(1, 2)), self.temb(t.float()[:, None])
        c = self.ctx.expand(x.shape[0], -1, -1)
        for blk in self.pair:
            h, c = blk(h, c, e)
        z = torch.cat([c, h], 1)
        for blk in self.joint:
            z = blk(z, e)
        return self.out(z[:, c.shape[1]:]).transpose(1, 2).reshape(x.shape)


def test_stackspec_then_chains_lists_with_different_stream_layouts():
    net = _TwoStage().eval()
    assert find_stack(net) == (net, _TWO_STAGE) and _TWO_STAGE.depth(net) == 5
    model = sz.Model(net, "velocity", sz.get_schedule("flow"))
    grid = sz.get_grid("flow_shift")(model.schedule, 10, shift=2.0)
    x = sz.randn((3, 4, 4, 4), sz.generators(range(3)))
    with torch.no_grad():
        ref = sz.sample("dpmpp_2m", model.denoiser(), x, grid)
        for cache, options in STACK_NEVER.items():
            res = sz.sample("dpmpp_2m", model.denoiser(), x, grid, cache=cache, cache_options=options)
            assert torch.equal(res.x, ref.x) and res.backbone_evals == pytest.approx(10), cache
        res = sz.sample("dpmpp_2m", model.denoiser(), x, grid, cache="taylorseer", cache_options={"interval": 2})
    # calls 0, 1 (warm-up), then 2, 4, 6, 8 run all 5 blocks of both lists
    assert res.backbone_evals == pytest.approx(6) and 0 < _rel(res.x, ref.x) < 0.05
    assert isinstance(net.pair, nn.ModuleList) and isinstance(net.joint, nn.ModuleList)


def test_mismatched_caches_and_bad_options_say_what_to_do(nets):
    with pytest.raises(CacheError, match="drives a StackSpec.*UNet2DModel declares a UNetSpec; caches for it: deepcache"):
        _sample(nets["unet"], cache="teacache")
    flux_msg = "drives a UNetSpec.*FluxTransformer2DModel declares a StackSpec; caches for it: first_block, taylorseer, teacache"
    with pytest.raises(CacheError, match=flux_msg):
        _sample(nets["flux"], cache="deepcache")
    with pytest.raises(CacheError, match="branch=3 needs a deeper U-Net.*from 1 to 2"):
        _sample(nets["unet_cond"], cache="deepcache", cache_options={"branch": 3})
    with pytest.raises(ValueError, match="needs calls="):
        DeepCache(uniform=False)
    for bad in ({"interval": 0}, {"branch": 1.5}, {"uniform": "no"}, {"uniform": False, "calls": 8, "center": 2}):
        with pytest.raises(ValueError, match="cache option"):
            DeepCache(**bad)
    with pytest.raises(TypeError, match="pairs or names"):
        StackSpec("a", *[lambda: None] * 4, then=((1, 2),))


def test_the_new_stacks_and_deepcache_are_listed(capsys):
    from solverzoo.cli import main

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in ("FluxTransformer2DModel", "UNet2DModel", "UNet2DConditionModel", "deepcache"))
