"""Video sampling speed and memory on the path users call: clips/s and peak memory of the
space-time video DiT (``shapes-video``) at batch 1 and 16, next to the frame-by-frame baseline
(``shapes-video-frames``: the image DiT on every frame, the same number of frames), both with
the same solver, steps and guidance through :func:`solverzoo.bench.generate.generate`; and the
next-token baseline's (``shapes-video-ar``) tokens/s and clips/s through its generator.

Each (backbone, batch) runs in a fresh process, so its peak resident memory is its own; the
increase of the peak over the process's resident memory after loading (the sampling's own
working memory) is reported beside it. On a CUDA device (``--device cuda``) peak memory is
``torch.cuda.max_memory_allocated``.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/video_speed.py [--out benchmarks/results/video_speed.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import torch

DIFFUSION = ("shapes-video", "shapes-video-frames")
AR = "shapes-video-ar"


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def one(name: str, batch: int, args) -> dict:
    """Sample ``batch`` clips ``reps`` times (after one warm-up) and time it."""
    from solverzoo.backbone import load_backbone

    torch.set_num_threads(args.threads)
    bb = load_backbone(name, device=args.device)
    prompts = [bb.world.example_prompt()] * batch
    after_load = _rss_mib()
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def run():
        if bb.generator is not None:
            from solverzoo.noise import generators

            x, stats = bb.generator.generate(prompts, generators(range(batch)), cfg_scale=args.scale)
            return bb.decode(x), int(stats["forward_passes"]), int(stats["tokens"])
        from solverzoo.bench.generate import generate

        out = generate(bb, prompts, solver=args.solver, steps=args.steps, guidance="cfg", scale=args.scale,
                       seeds=range(batch), batch_size=batch, device=args.device)
        return out.images, out.nfe, 0

    with torch.no_grad():
        run()  # warm-up
        _sync(args.device)
        t0 = time.perf_counter()
        for _ in range(args.reps):
            _, evals, tokens = run()
        _sync(args.device)
    dt = (time.perf_counter() - t0) / args.reps
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if args.device == "cuda" else _rss_mib()
    out = {"backbone": name, "batch": batch, "clips_per_s": batch / dt, "s_per_batch": dt, "evals_per_clip": evals,
           "frames_per_clip": int(bb.latent_shape[0]), "peak_mem_mib": peak,
           "peak_kind": "cuda max allocated" if args.device == "cuda" else "process max RSS",
           "sampling_mem_mib": peak - (0.0 if args.device == "cuda" else after_load)}
    if tokens:
        out["tokens_per_s"] = batch * tokens / dt
        out["tokens_per_clip"] = tokens
    return out


def _child(name: str, batch: int, args) -> dict:
    cmd = [sys.executable, __file__, "--one", name, str(batch), "--threads", str(args.threads), "--device", args.device,
           "--solver", args.solver, "--steps", str(args.steps), "--scale", str(args.scale), "--reps", str(args.reps)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        return {"backbone": name, "batch": batch, "error": res.stderr.strip().splitlines()[-1] if res.stderr else "failed"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def markdown(res: dict) -> str:
    s = res["settings"]
    lines = [f"Video sampling on {res['device']} ({s['threads']} threads): diffusion `{s['solver']}` {s['steps']} steps, cfg "
             f"{s['scale']:g} (NFE {2 * s['steps']}); AR: one forward pass per token, cfg {s['scale']:g} on logits. "
             f"Mean of {s['reps']} timed runs after a warm-up, each configuration in a fresh process.", "",
             "| backbone | batch | clips/s | tokens/s | evals / clip | peak MiB | sampling MiB |", "|---|---|" + "---|" * 5]
    for r in res["rows"]:
        if "error" in r:
            lines.append(f"| {r['backbone']} | {r['batch']} | failed: {r['error']} | | | | |")
            continue
        tok = f"{r['tokens_per_s']:.0f}" if "tokens_per_s" in r else "-"
        lines.append(f"| {r['backbone']} | {r['batch']} | {r['clips_per_s']:.2f} | {tok} | {r['evals_per_clip']} | "
                     f"{r['peak_mem_mib']:.0f} | {r['sampling_mem_mib']:.0f} |")
    for b in res["settings"]["batches"]:
        st = {r["backbone"]: r for r in res["rows"] if r["batch"] == b and "error" not in r}
        if "shapes-video" in st and "shapes-video-frames" in st:
            ratio = st["shapes-video"]["clips_per_s"] / st["shapes-video-frames"]["clips_per_s"]
            lines.append(f"\nBatch {b}: space-time / frame-by-frame clips/s = {ratio:.2f} at equal frames and NFE.")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--one", nargs=2, metavar=("BACKBONE", "BATCH"), help=argparse.SUPPRESS)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--backbones", nargs="+", default=[*DIFFUSION, AR])
    ap.add_argument("--solver", default="dpmpp_2m")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--scale", type=float, default=3.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="benchmarks/results/video_speed.json")
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args)))
        return 0
    rows = [_child(name, b, args) for name in args.backbones for b in args.batches]
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    res = {"rows": rows, "device": device, "settings": {k: getattr(args, k) for k in
                                                         ("solver", "steps", "scale", "reps", "threads", "batches")},
           "command": "OMP_NUM_THREADS=2 .venv/bin/python benchmarks/video_speed.py " + " ".join(argv or sys.argv[1:]),
           "versions": {"torch": torch.__version__, "python": platform.python_version()}}
    res["markdown"] = markdown(res)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)
    print(res["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
