"""GPU checks of the sampling loop with the shipped shapes-flow DiT (bf16 weights, CUDA):

1. every registered ODE solver samples under ``torch.cuda.set_sync_debug_mode("error")``: the
   loop (``Solver.loop`` after the host-side ``plan``) makes no host-device synchronisation;
2. one solver's whole sampling loop captured in a CUDA graph, images/s vs eager at batch 1
   and 64 (and ``torch.compile(mode="reduce-overhead")`` where it compiles in time);
3. caches: backbone evaluations and images/s of each registered cache vs none.

The text encoder is not needed on the GPU machine: ``--prepare DIR`` (run where solverzoo's
dependencies are installed) writes the prompt encodings to ``DIR/cond.safetensors``.

    .venv/bin/python benchmarks/gpu_sampling.py --prepare .gpu          # here
    python3 benchmarks/gpu_sampling.py --cond .gpu/cond.safetensors --out benchmarks/results/gpu_sampling.json
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback

import torch

import solverzoo as sz
from solverzoo import registry, schedule_from_spec
from solverzoo.models import weights
from solverzoo.models.nets import DiT


def prepare(out_dir: str, n: int = 64) -> None:
    from pathlib import Path

    from safetensors.torch import save_file

    from solverzoo.models.conditioners import minilm
    from solverzoo.models.worlds import ShapesWorld

    prompts = ShapesWorld(1).batch(0, n)[1]
    enc = minilm()
    cond, null = enc.encode(prompts), enc.null(n)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    save_file({**{f"cond.{k}": v.contiguous() for k, v in cond.items()},
               **{f"uncond.{k}": v.contiguous() for k, v in null.items()}}, f"{out_dir}/cond.safetensors")
    print(f"wrote {out_dir}/cond.safetensors for {n} prompts")


class Bf16Net(torch.nn.Module):
    """The DiT in bf16 behind a float32 interface (the solver's state stays float32)."""

    def __init__(self, net):
        super().__init__()
        self.net = net.to(torch.bfloat16)
        self.module = self.net  # caches find the DiT (and its blocks) through it

    def forward(self, x, t, **cond):
        cond = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in cond.items()}
        return self.net(x.to(torch.bfloat16), t, **cond).float()


def load(device: str, cond_file: str):
    from safetensors.torch import load_file

    path = weights.resolve("shapes-dit-flow")
    cfg = weights.read_meta(path)["config"]
    net = weights.load_into(DiT(**cfg["net"]), path).to(device).eval()
    sched = schedule_from_spec(cfg["schedule"])
    raw = load_file(cond_file)
    conds = {b: {k.split(".", 1)[1]: v.to(device) for k, v in raw.items() if k.startswith(b + ".")} for b in ("cond", "uncond")}
    return net, cfg, sched, conds


def denoiser(net, cfg, sched, conds, batch, scale=4.0):
    model = sz.Model(net, cfg["prediction"], sched, time_input=cfg["time_input"])
    take = {b: {k: v[:batch] for k, v in c.items()} for b, c in conds.items()}
    return sz.GuidedDenoiser(model, sz.get_guidance("cfg", scale=scale), take)


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, reps):
    fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        out = fn()
    sync(device)
    return (time.perf_counter() - t0) / reps, out


def check_sync_free(net, cfg, sched, conds, device, steps=10, batch=8):
    grid = sz.get_grid("flow_shift")(sched, steps, shift=2.0)
    rows = []
    for name in registry.names("solver"):
        solver = registry.get("solver", name)
        if solver.adaptive:
            continue
        den = denoiser(net, cfg, sched, conds, batch)
        x = torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(0)).to(device)
        row = {"solver": name, "steps": steps, "batch": batch, "stochastic": solver.is_stochastic()}
        # stochastic solvers draw step noise on the generators' device: CUDA generators keep it there
        gen = (lambda: sz.generators(range(batch), device=device)) if solver.is_stochastic() else (lambda: None)
        try:
            plan = solver.plan(sched, grid)
            with torch.no_grad():
                solver.loop(den, x, grid, plan, generator=gen())  # warm-up (first-call allocations) outside the check
                g = gen()
                if device == "cuda":
                    torch.cuda.set_sync_debug_mode("error")
                try:
                    out = solver.loop(den, x, grid, plan, generator=g)
                finally:
                    if device == "cuda":
                        torch.cuda.set_sync_debug_mode(0)
            row.update(sync_free=True, finite=bool(torch.isfinite(out).all()))
        except Exception as e:  # noqa: BLE001 - recorded, the other solvers still run
            row.update(sync_free=False, error=f"{type(e).__name__}: {e}", where=traceback.format_exc(limit=-3))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def graph_speed(net, cfg, sched, conds, device, solver_name="dpmpp_2m", steps=20, batches=(1, 64)):
    solver = registry.get("solver", solver_name)
    grid = sz.get_grid("flow_shift")(sched, steps, shift=2.0)
    plan = solver.plan(sched, grid)
    rows = []
    for b in batches:
        den = denoiser(net, cfg, sched, conds, b)
        static_x = torch.randn(b, 4, 8, 8, generator=torch.Generator().manual_seed(0)).to(device)
        reps = 20 if b == 1 else 10
        with torch.no_grad():
            t_eager, out_eager = timed(lambda: solver.loop(den, static_x, grid, plan), device, reps)
            row = {"solver": solver_name, "steps": steps, "batch": b, "guidance": "cfg 4 (2 branches)",
                   "eager_images_per_s": b / t_eager, "eager_ms": t_eager * 1e3}
            if device == "cuda":
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    for _ in range(2):
                        solver.loop(den, static_x, grid, plan)
                torch.cuda.current_stream().wait_stream(s)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    static_out = solver.loop(den, static_x, grid, plan)
                t_graph, _ = timed(lambda: g.replay(), device, reps * 5)
                row.update(graph_images_per_s=b / t_graph, graph_ms=t_graph * 1e3, speedup=t_eager / t_graph,
                           graph_vs_eager_max_abs=float((static_out - out_eager).abs().max()))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def compile_speed(net, cfg, sched, conds, device, solver_name="dpmpp_2m", steps=20, batch=64, budget_s=240):
    solver = registry.get("solver", solver_name)
    grid = sz.get_grid("flow_shift")(sched, steps, shift=2.0)
    plan = solver.plan(sched, grid)
    den = denoiser(net, cfg, sched, conds, batch)
    x = torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(0)).to(device)
    fn = torch.compile(lambda x: solver.loop(den, x, grid, plan), mode="reduce-overhead", fullgraph=True)
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(3):
            fn(x)
        sync(device)
        compile_s = time.perf_counter() - t0
        if compile_s > budget_s:
            return {"skipped": f"compile took {compile_s:.0f} s"}
        t, _ = timed(lambda: fn(x), device, 20)
        t_e, _ = timed(lambda: solver.loop(den, x, grid, plan), device, 10)
    row = {"solver": solver_name, "steps": steps, "batch": batch, "mode": "reduce-overhead", "compile_s": compile_s,
           "compiled_images_per_s": batch / t, "eager_images_per_s": batch / t_e, "speedup": t_e / t}
    print(json.dumps(row), flush=True)
    return row


def cache_speed(net, cfg, sched, conds, device, solver_name="dpmpp_2m", steps=50, batch=64):
    from solverzoo.caching import drives, find_stack

    layout = find_stack(net)[1]
    names = [n for n in registry.names("cache") if drives(n, layout)]  # deepcache drives UNets, not this DiT
    solver = registry.get("solver", solver_name)
    grid = sz.get_grid("flow_shift")(sched, steps, shift=2.0)
    x = torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(0)).to(device)
    rows, base = [], None
    for name in [None] + list(names):
        den = denoiser(net, cfg, sched, conds, batch)
        with torch.no_grad():
            run = lambda: sz.sample(solver, den, x, grid, cache=name)  # noqa: E731
            t, res = timed(run, device, 3)
        base = res.x if base is None else base
        row = {"cache": name or "none", "solver": solver_name, "steps": steps, "batch": batch, "nfe": res.nfe,
               "backbone_evals": res.backbone_evals, "images_per_s": batch / t,
               "max_abs_vs_no_cache": float((res.x - base).abs().max())}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prepare")
    ap.add_argument("--cond", default=".gpu/cond.safetensors")
    ap.add_argument("--out", default="benchmarks/results/gpu_sampling.json")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument("--parts", default="sync,graph,caches,compile", help="comma list of: sync, graph, caches, compile")
    a = ap.parse_args()
    parts = set(a.parts.split(","))
    if a.prepare:
        prepare(a.prepare)
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    net, cfg, sched, conds = load(a.device, a.cond)
    bnet = Bf16Net(net) if a.device == "cuda" else net
    res = {"benchmark": "gpu_sampling", "torch": torch.__version__, "device": a.device,
           "gpu": torch.cuda.get_device_name() if a.device == "cuda" else None, "machine": platform.machine(),
           "dtype": "bfloat16 weights and activations, float32 solver state" if a.device == "cuda" else "float32",
           "backbone": "shapes-flow (shipped DiT)", "command": " ".join(["python3"] + sys.argv)}

    def save():
        with open(a.out, "w") as fh:
            json.dump(res, fh, indent=2)

    if "sync" in parts:
        res["sync_free"] = check_sync_free(bnet, cfg, sched, conds, a.device)
        save()
    if "graph" in parts:
        res["cuda_graph"] = graph_speed(bnet, cfg, sched, conds, a.device)
        save()
    if "caches" in parts:
        try:
            res["caches"] = cache_speed(bnet, cfg, sched, conds, a.device)
        except Exception as e:  # noqa: BLE001
            res["caches"] = {"error": f"{type(e).__name__}: {e}"}
        save()
    if not a.skip_compile and "compile" in parts:
        try:
            res["compile"] = compile_speed(bnet, cfg, sched, conds, a.device)
        except Exception as e:  # noqa: BLE001
            res["compile"] = {"error": f"{type(e).__name__}: {e}"[:2000]}
        save()
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
