"""DiT forward throughput (images/s) and peak resident memory at batch 1, 16, 64 on CPU, and
training throughput, for the shipped shapes DiT; bf16 on CUDA where a GPU is available.
Each batch size runs in a fresh process so its peak RSS is its own.

    .venv/bin/python benchmarks/dit_throughput.py [--out benchmarks/results/dit_throughput.json]
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

from solverzoo.models.nets import DiT

CFG = dict(in_channels=4, input_size=8, patch=2, hidden=128, depth=6, heads=4, mlp_ratio=4.0, text_dim=384)


def _inputs(b, device, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    return (mk(b, 4, 8, 8), torch.rand(b, generator=g).to(device) * 1000, mk(b, 24, 384),
            torch.ones(b, 24, dtype=torch.bool, device=device), mk(b, 384))


def one(batch: int, mode: str, device: str) -> dict:
    torch.manual_seed(0)
    dtype = torch.bfloat16 if mode == "bf16" else torch.float32
    net = DiT(**CFG).to(device=device, dtype=dtype)
    args = _inputs(batch, device, dtype)
    reps = max(3, 256 // batch)
    if mode == "train":
        opt = torch.optim.AdamW(net.parameters())
        step = lambda: (net(*args).pow(2).mean().backward(), opt.step(), opt.zero_grad())  # noqa: E731
    else:
        net.eval()
        step = lambda: torch.no_grad()(net)(*args)  # noqa: E731
    step()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / reps
    peak = (torch.cuda.max_memory_allocated() / 2 ** 20 if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"batch": batch, "mode": mode, "device": device, "images_per_s": batch / dt, "ms_per_batch": dt * 1e3,
            "peak_mem_mib": peak, "peak_mem_kind": "cuda max allocated" if device == "cuda" else "process max RSS"}


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        print(json.dumps(one(int(sys.argv[2]), sys.argv[3], sys.argv[4])))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/dit_throughput.json")
    a = ap.parse_args()
    runs = [(b, "forward", "cpu") for b in (1, 16, 64)] + [(64, "train", "cpu")]
    if torch.cuda.is_available():
        runs += [(b, m, "cuda") for b in (1, 16, 64) for m in ("forward", "bf16")]
    rows = []
    for b, m, d in runs:
        out = subprocess.run([sys.executable, __file__, "--one", str(b), m, d], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{d:<5} {m:<8} batch {b:>3}: {r['images_per_s']:9.1f} images/s  {r['ms_per_batch']:8.2f} ms/batch  "
              f"peak {r['peak_mem_mib']:.0f} MiB")
    res = {"benchmark": "dit_throughput", "dit_config": CFG, "params": sum(p.numel() for p in DiT(**CFG).parameters()),
           "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
           "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "rows": rows,
           "command": "python benchmarks/dit_throughput.py"}
    with open(a.out, "w") as fh:
        json.dump(res, fh, indent=2)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
