"""The ``solverzoo`` command line: ``plugins``, ``verify``, ``conformance``, ``sample``, ``bench``, ``report``,
``optimise-grid``, ``train``."""
from __future__ import annotations

import argparse
import ast
import json
import sys

from solverzoo.registry import KINDS, PluginError, UnknownComponentError, registry
from solverzoo.models.weights import WeightsError
from solverzoo.bench.records import ResultsError


def _component_rows() -> list[dict]:
    rows = []
    for e in registry.entries():
        row = {"kind": e.kind, "name": e.name, "origin": e.origin, "plugin": e.plugin}
        obj = e.obj
        if e.kind == "solver":
            row.update(order=obj.order, stochastic=obj.stochastic, evals_per_step=obj.evals_per_step,
                       adaptive=obj.adaptive, options=obj.info()["options"], description=obj.description)
        elif e.kind == "grid":
            row.update(options=obj.info()["options"], description=obj.description)
        elif e.kind == "cache":
            info = obj().info()
            row.update(options=info["options"], syncs_per_call=info["syncs_per_call"], description=info["description"])
        else:
            doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
            row["description"] = doc[0] if doc else ""
        rows.append(row)
    for (kind, name), entries in sorted(registry.conflicts().items()):
        rows.append({"kind": kind, "name": name, "origin": " | ".join(f"{x.plugin} ({x.origin})" for x in entries),
                     "error": "name registered by more than one plugin"})
    for f in registry.failures:
        rows.append({"kind": "plugin", "name": f.plugin, "origin": f.origin, "error": f.error})
    return rows


def cmd_plugins(args) -> int:
    rows = _component_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows) if rows else 4
    for kind in KINDS + ("plugin",):
        group = [r for r in rows if r["kind"] == kind]
        if not group:
            continue
        print(f"{kind}s:" if kind != "plugin" else "failed plugins:")
        for r in group:
            extra = ""
            if "error" in r:
                extra = f"  ERROR: {r['error']}"
            elif kind == "solver":
                extra = f"  {'SDE' if r['stochastic'] else 'ODE'} order={r['order']} evals/step={r['evals_per_step']}"
            print(f"  {r['name']:<{width}}  [{r['origin']}]{extra}  {r.get('description', '')}".rstrip())
    return 0


def _parse_options(pairs: list[str]) -> dict:
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise SystemExit(f"solverzoo: error: option {p!r} must look like name=value")
        k, v = p.split("=", 1)
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k] = v
    return out


def _write_report(reports, out_dir: str, argv: list[str]) -> None:
    """index.md + results.json comparing every solver on the testbed."""
    import os
    import platform

    import torch

    from solverzoo import __version__

    os.makedirs(out_dir, exist_ok=True)
    first = reports[0]
    nfes = [r.nfe for r in first.rows]
    lines = [
        "# Solver accuracy on the Gaussian-mixture testbed", "",
        f"Made by `solverzoo {' '.join(argv)}` with solverzoo {__version__}, torch {torch.__version__}, "
        f"Python {platform.python_version()}.", "",
        f"Testbed: exact {first.dim}-D Gaussian mixture (6 components, seed {first.seed}), {first.n_samples} samples "
        f"of x_T drawn exactly from the marginal; schedule `{first.schedule}`; grid `{first.grid}` ending at t_min; "
        f"`{first.prediction}` model. Reference: scipy DOP853 on the same PF-ODE (rtol = atol = 1e-11).", "",
        "Median endpoint error (RMS over dimensions) per NFE; empirical order is minus the slope of log error on "
        "log NFE over the upper half of the ladder. Stochastic solvers are compared by sliced Wasserstein "
        "distance to exact samples instead (their endpoint error against the ODE does not converge).", "",
        "| solver | declared order | empirical order | " + " | ".join(f"NFE {n}" for n in nfes) + " | mode flips (lowest NFE) |",
        "|---|---|---|" + "---|" * len(nfes) + "---|",
    ]
    for r in reports:
        if r.stochastic:
            cells = [f"SW {row.sliced_wasserstein:.3f}" for row in r.rows]
            emp = "n/a (SDE)"
        else:
            cells = [f"{row.median_error:.2e}" for row in r.rows]
            emp = f"{r.empirical_order:.2f}" if r.empirical_order is not None else "n/a"
        lines.append(f"| {r.solver} | {r.declared_order} | {emp} | " + " | ".join(cells) + f" | {r.rows[0].mode_flip_rate:.3f} |")
    with open(os.path.join(out_dir, "index.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    with open(os.path.join(out_dir, "results.json"), "w") as fh:
        json.dump({"command": "solverzoo " + " ".join(argv), "reports": [r.to_dict() for r in reports]}, fh, indent=2)
    print(f"wrote {os.path.join(out_dir, 'index.md')}")


def cmd_verify(args) -> int:
    from solverzoo.testing.verify import verify

    if args.all == (args.solver is not None):
        raise ValueError("name one SOLVER, or pass --all to verify every registered solver")
    nfes = tuple(int(x) for x in args.nfes.split(",")) if args.nfes else None
    kwargs = dict(schedule=args.schedule, grid=args.grid, prediction=args.prediction, n=args.n, dim=args.dim,
                  seed=args.seed, options=_parse_options(args.option), schedule_options=_parse_options(args.schedule_option))
    if nfes:
        kwargs["nfes"] = nfes
    if args.all:
        names = [n for n in registry.names("solver") if not registry.get("solver", n).adaptive]
        reports = []
        for name in names:
            reports.append(verify(name, **{**kwargs, "options": {}}))
            r = reports[-1]
            emp = "n/a" if r.empirical_order is None else f"{r.empirical_order:.2f}"
            print(f"{name:<16} declared {r.declared_order}  empirical {emp:>5}  median error at NFE {r.rows[-1].nfe}: "
                  f"{r.rows[-1].median_error:.2e}", flush=True)
        if args.out:
            _write_report(reports, args.out, ["verify", *args.argv])
        if args.json:
            print(json.dumps([r.to_dict() for r in reports], indent=2))
        return 0
    rep = verify(args.solver, **kwargs)
    if args.json:
        print(json.dumps(rep.to_dict(), indent=2))
        return 0
    emp = "n/a" if rep.empirical_order is None else f"{rep.empirical_order:.2f}"
    print(f"solver {rep.solver}: declared order {rep.declared_order}, empirical order {emp}")
    print(f"testbed: Gaussian mixture, dim {rep.dim}, {rep.n_samples} samples, seed {rep.seed}; schedule {rep.schedule}; "
          f"grid {rep.grid}; {rep.prediction} model; reference scipy DOP853 (rtol 1e-11)")
    head = f"{'NFE':>6} {'steps':>6} {'median error':>13} {'mode flips':>11}"
    print(head + (f" {'sliced W1':>10}" if rep.stochastic else ""))
    for r in rep.rows:
        line = f"{r.nfe:>6} {r.steps:>6} {r.median_error:>13.3e} {r.mode_flip_rate:>11.3f}"
        print(line + (f" {r.sliced_wasserstein:>10.4f}" if rep.stochastic else ""))
    if rep.note:
        print(f"note: {rep.note}")
    return 0


def cmd_conformance(args) -> int:
    """Run the packaged conformance checks on each named solver or grid; 0 iff all pass."""
    from solverzoo.testing import applicable_checks, run_conformance

    for name in args.names:  # unknown names fail before anything runs
        applicable_checks(name)
    results = []
    for name in args.names:
        results.append(run_conformance(name))
        print(results[-1].summary(), flush=True)
    return 0 if all(r.ok for r in results) else 1


MAX_STEPS = 10_000  # `sample --steps` above this is refused (a typo far more often than a wish)
MAX_GRID_PIXELS = 100_000_000  # `sample`: the PNG grid's pixel limit (n x upscaled image size)
MAX_SCALE = 100.0  # `sample --scale` bound: far beyond any useful guidance strength
SAMPLE_CHUNK = 8  # `sample`: sample i is always computed in the batch of samples 8*(i//8) .. 8*(i//8)+7
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# what `sample` knows of the built-in backbones before loading them (a plugin's is checked after loading)
_BUILTIN_IMAGE = {"shapes-flow": (3, 32, 32), "shapes-eps": (3, 32, 32), "digits": (1, 16, 16)}


class UsageError(ValueError):
    """A command line a user got wrong: one line, exit 2."""


def _warn(msg: str) -> None:
    print(f"solverzoo: warning: {msg}", file=sys.stderr)


def _check_prompt(backbone: str, prompt: str, what: str) -> None:
    """Refuse prompts a built-in backbone cannot take; warn about words outside a world's vocabulary."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{what} is not valid UTF-8 text ({prompt.encode('utf-8', 'surrogateescape')[:40]!r}); "
                         "pass the prompt as UTF-8") from None
    if backbone == "gmm":
        raise UsageError(f"backbone gmm is conditioned on class labels (0, 1 or 2), not text like {prompt!r}, and samples "
                         "4-D points, not images: `solverzoo sample` writes an image grid, so use an image backbone "
                         "(shapes-flow, shapes-eps, digits) or benchmark gmm with `solverzoo bench backbone=gmm`")
    if backbone == "digits":
        from solverzoo.models.worlds.digits import digit_label

        try:
            digit_label(prompt)
        except ValueError as exc:
            raise UsageError(f"{what}: {exc}") from None
    if backbone in ("shapes-flow", "shapes-eps"):
        import re

        from solverzoo.models.worlds import shapes as w

        vocab = {t for tpl in w.SINGLE_TEMPLATES + w.PAIR_TEMPLATES for t in re.findall(r"[a-z]+", re.sub(r"\{\w+\}", "", tpl))}
        for words in (w.SHAPES, w.COLOUR_NAMES, w.SIZES, w.POSITIONS, *w.SYNONYMS.values()):
            vocab |= {t for x in words for t in x.split()}
        unknown = [t for t in re.findall(r"[a-z]+", prompt.lower()) if t not in vocab]
        parsed = w.parse_caption(prompt)
        if unknown or parsed["count"] == 0:
            why = f"words outside its vocabulary: {', '.join(repr(u) for u in dict.fromkeys(unknown))}" if unknown else "no shape named"
            _warn(f"{what} {prompt!r} is outside the shapes world's grammar ({why}); the model was trained on captions "
                  "like 'a large red circle at the top left' or 'a small blue square beside a green triangle' "
                  "(1-2 objects; shapes circle/square/triangle; colours " + "/".join(w.COLOUR_NAMES) +
                  "): expect an image that ignores what it does not know")


def _check_out(out: str) -> None:
    import os
    from pathlib import Path

    from solverzoo.bench.sweep import ConfigError, check_output_dir

    p = Path(out).expanduser()
    if p.is_dir():
        raise UsageError(f"--out {out} is a directory; give a file name such as {os.path.join(out, 'grid.png')}")
    if p.suffix.lower() not in IMAGE_EXTENSIONS:
        raise UsageError(f"--out {out}: the file name needs an image extension ({', '.join(IMAGE_EXTENSIONS)}), e.g. grid.png")
    if p.exists() and not os.access(p, os.W_OK):
        raise UsageError(f"--out {out} exists and is not writable")
    try:
        check_output_dir(str(p.parent), f"--out {out}: folder")
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def validate_sample(args) -> None:
    """Every check of ``solverzoo sample`` that needs no backbone: runs before the (slow) load."""
    import math

    from solverzoo.bench.sweep import ConfigError, check_device

    if args.backbone not in registry.names("backbone"):
        registry.get("backbone", args.backbone)  # UnknownComponentError with close matches
    if args.n < 1:
        raise UsageError(f"--n {args.n}: the number of samples must be at least 1")
    if not 0 <= args.seed <= 2**63 - 1 - args.n - SAMPLE_CHUNK:
        raise UsageError(f"--seed {args.seed} is out of range: seeds are integers in [0, 2**63 - 1 - n - {SAMPLE_CHUNK}] "
                         "(sample i uses seed + i)")
    if not 1 <= args.steps <= MAX_STEPS:
        raise UsageError(f"--steps {args.steps} must lie in [1, {MAX_STEPS}]")
    if not (math.isfinite(args.scale) and 0.0 <= args.scale <= MAX_SCALE):
        raise UsageError(f"--scale {args.scale:g} must be a finite number in [0, {MAX_SCALE:g}]")
    if args.negative_prompt is not None and args.guidance == "none":
        raise UsageError("--negative-prompt needs guidance (e.g. --guidance cfg, or negative_prompt); with "
                         "--guidance none it would be ignored")
    registry.get("solver", args.solver)
    if args.grid is not None:
        registry.get("grid", args.grid)
    if args.guidance != "none":
        registry.get("guidance", args.guidance)(scale=args.scale)  # names and checks the scale
    if args.cache is not None:
        registry.get("cache", args.cache)
    try:
        check_device(args.device)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    _check_prompt(args.backbone, args.prompt, "--prompt")
    if args.negative_prompt is not None:
        _check_prompt(args.backbone, args.negative_prompt, "--negative-prompt")
    if args.backbone in _BUILTIN_IMAGE:
        _check_grid_pixels(args.n, _BUILTIN_IMAGE[args.backbone])
    _check_out(args.out)


def _check_grid_pixels(n: int, shape) -> None:
    """Refuse an image grid (upscaled 4x, 2-pixel padding: as save_grid writes it) over MAX_GRID_PIXELS."""
    import math

    _, h, w = shape
    ncol = math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    px = (nrow * (h + 2) + 2) * (ncol * (w + 2) + 2) * 16
    if px > MAX_GRID_PIXELS:
        most = int((math.sqrt(MAX_GRID_PIXELS / 16) / (max(h, w) + 2)) ** 2)
        raise UsageError(f"--n {n}: the image grid would have {px / 1e6:.0f} megapixels, over the limit of "
                         f"{MAX_GRID_PIXELS / 1e6:.0f}; use --n {most} or fewer (and several seeds) instead")


def cmd_sample(args) -> int:
    import time

    validate_sample(args)  # before the backbone load: bad input costs nothing
    import torch

    from solverzoo.backbone import load_backbone
    from solverzoo.models.images import save_grid

    t0 = time.perf_counter()
    bb = load_backbone(args.backbone, args.device)
    load_s = time.perf_counter() - t0
    if len(bb.latent_shape) != 3:
        raise UsageError(f"backbone {bb.name} samples {tuple(bb.latent_shape)}-shaped points, not images; "
                         "`solverzoo sample` writes an image grid")
    if args.backbone not in _BUILTIN_IMAGE:
        with torch.no_grad():
            _check_grid_pixels(args.n, tuple(bb.decode(torch.zeros((1,) + tuple(bb.latent_shape), device=args.device)).shape[1:]))
    guidance = None if args.guidance == "none" else args.guidance
    if args.negative_prompt is not None and guidance == "cfg":
        guidance = "negative_prompt"
    kw = dict(solver=args.solver, steps=args.steps, grid=args.grid, guidance=guidance, scale=args.scale, device=args.device,
              solver_options=_parse_options(args.option), grid_options=_parse_options(args.grid_option),
              cache=args.cache, cache_options=_parse_options(args.cache_option), batch_size=SAMPLE_CHUNK)
    images, nfe, evals, sampling_s = _sample_chunks(bb, args, kw)
    path = save_grid(images, args.out)
    print(f"wrote {path}: {args.n} samples of {args.prompt!r} from {bb.name}, solver {args.solver}, {args.steps} steps, "
          f"guidance {guidance or 'none'}" + (f" scale {args.scale}" if guidance else ""))
    print(f"NFE per sample: {nfe}; backbone evaluations {evals:.1f}; wall time {time.perf_counter() - t0:.2f} s "
          f"(sampling {sampling_s:.2f} s; backbone load {load_s:.2f} s)")
    return 0


def _sample_chunks(bb, args, kw):
    """Samples 0..n-1 in fixed batches of SAMPLE_CHUNK (sample i always in the batch of seeds
    seed + 8*(i//8) ..., the last batch filled up with the samples that follow and dropped), so
    sample i is bit-identical whatever --n; a progress bar over model calls, with an estimate."""
    import time

    import torch
    from tqdm import tqdm

    from solverzoo.bench.generate import generate

    n, k = args.n, SAMPLE_CHUNK
    chunks = (n + k - 1) // k
    calls = [0]
    net = bb.model.net
    guess = args.steps * registry.get("solver", args.solver).evals_per_step * chunks
    bar = tqdm(total=guess, desc=f"sampling {n} x {args.steps} steps", unit="call", file=sys.stderr,
               disable=None if chunks * args.steps < 200 else False, leave=False)

    def counted(*a, **kk):
        calls[0] += 1
        bar.update(1)
        return net(*a, **kk)
    counted.__wrapped__ = net
    images, nfe, evals, samp = [], 0, 0.0, 0.0
    bb.model.net = counted
    try:
        t0 = time.perf_counter()
        for j in range(chunks):
            seeds = range(args.seed + j * k, args.seed + (j + 1) * k)
            neg = [args.negative_prompt] * k if args.negative_prompt is not None else None
            out = generate(bb, [args.prompt] * k, negative_prompts=neg, seeds=seeds, **kw)
            take = min(k, n - j * k)
            images.append(out.images[:take])
            nfe, evals, samp = out.nfe, evals + out.backbone_evals * take / n, samp + out.sampling_s
            if j == 0:
                bar.total = calls[0] * chunks
                bar.refresh()
                if chunks > 1:
                    est = (time.perf_counter() - t0) * (chunks - 1)
                    print(f"solverzoo: {n} samples in {chunks} batches of {k}; about {est:.0f} s to go "
                          f"(first batch {time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
    finally:
        bb.model.net = net
        bar.close()
    return torch.cat(images), nfe, evals, samp


def cmd_train(args) -> int:
    from solverzoo.models.train import run

    record = run(args.artifact, args.overrides)
    print(json.dumps(record, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="solverzoo", description="A plugin-based zoo of diffusion solvers with a benchmark harness.")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks (for bug reports)")
    sub = p.add_subparsers(dest="command", required=True)
    pl = sub.add_parser("plugins", help="list every registered component and failed plugin")
    pl.add_argument("--json", action="store_true", help="print a JSON list, one object per component")
    pl.set_defaults(fn=cmd_plugins)
    v = sub.add_parser("verify", help="measure a solver's accuracy and order on the analytic Gaussian-mixture testbed")
    v.add_argument("solver", nargs="?")
    v.add_argument("--all", action="store_true", help="verify every registered solver")
    v.add_argument("--out", help="with --all: write index.md and results.json to this directory")
    v.add_argument("--json", action="store_true")
    v.add_argument("--schedule", default="vp", help="schedule family (default: vp)")
    v.add_argument("--schedule-option", action="append", metavar="NAME=VALUE", help="schedule option, repeatable")
    v.add_argument("--grid", default="logsnr", help="time grid (default: logsnr)")
    v.add_argument("--prediction", default="epsilon", choices=["epsilon", "x0", "v", "velocity"])
    v.add_argument("--nfes", help="comma-separated NFE ladder (default: 16,32,64,128,256)")
    v.add_argument("--n", type=int, default=128, help="samples (default: 128)")
    v.add_argument("--dim", type=int, default=4)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--option", "-o", action="append", metavar="NAME=VALUE", help="solver option, repeatable")
    v.set_defaults(fn=cmd_verify)
    cf = sub.add_parser("conformance", help="run the packaged conformance checks on solvers or grids (exit 1 on a failure)")
    cf.add_argument("names", nargs="+", metavar="NAME", help="registered solver or grid names")
    cf.set_defaults(fn=cmd_conformance)
    sp = sub.add_parser("sample", help="sample an image grid from a backbone")
    sp.add_argument("--backbone", default="shapes-flow", help="registered backbone (see `solverzoo plugins`)")
    sp.add_argument("--prompt", required=True)
    sp.add_argument("--negative-prompt", default=None)
    sp.add_argument("--solver", default="dpmpp_2m")
    sp.add_argument("--steps", type=int, default=20)
    sp.add_argument("--grid", default=None, help="time grid (default: the backbone's)")
    sp.add_argument("--guidance", default="cfg", help="guidance method, or 'none'")
    sp.add_argument("--scale", type=float, default=4.0)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--n", type=int, default=16, help="samples (default 16); sample i is bit-identical whatever --n "
                    "(same machine, torch build and thread count)")
    sp.add_argument("--device", default="cpu")
    sp.add_argument("--option", "-o", action="append", metavar="NAME=VALUE", help="solver option, repeatable")
    sp.add_argument("--grid-option", action="append", metavar="NAME=VALUE", help="grid option, repeatable (e.g. key=... for --grid optimised)")
    sp.add_argument("--cache", default=None, help="a registered cache (teacache, first_block, taylorseer)")
    sp.add_argument("--cache-option", action="append", metavar="NAME=VALUE", help="cache option, repeatable (e.g. threshold=0.05)")
    sp.add_argument("--out", default="grid.png")
    sp.set_defaults(fn=cmd_sample)
    sub.add_parser("bench", help="run a benchmark sweep (Hydra app: solverzoo bench [overrides] [-m] [--fail-fast] "
                   "[--keep-going]); exit 0 ok, 2 bad input or results_dir in use, 3 cells failed")
    rp = sub.add_parser("report", help="write a report (index.md + PNG figures) from a results directory")
    rp.add_argument("results", help="a results_dir written by `solverzoo bench`")
    rp.add_argument("--out", default=None, help="output folder (default: RESULTS/report)")
    rp.set_defaults(fn=cmd_report)
    og = sub.add_parser("optimise-grid", help="optimise a time grid for one backbone, solver and step count(s) and save it by key")
    og.add_argument("--backbone", required=True)
    og.add_argument("--solver", required=True, help="a deterministic fixed-step solver, e.g. dpmpp_2m")
    og.add_argument("--steps", type=int, nargs="+", required=True)
    og.add_argument("--guidance", default="none", help="guidance the grid is for (none, cfg, ...)")
    og.add_argument("--scale", type=float, default=1.0)
    og.add_argument("--base-grid", default="auto", help="starting grid: auto (best built-in on the calibration set), default, or a name")
    og.add_argument("--n", type=int, default=256, help="calibration samples (own seeds and prompts, never the harness's)")
    og.add_argument("--max-evals", type=int, default=300, help="objective evaluations per step count")
    og.add_argument("--key", default=None, help="name to save under (default BACKBONE-SOLVER-GUIDANCE)")
    og.add_argument("--out", default=None, help="folder to save into (default ~/.cache/solverzoo/grids; ./grids and "
                    "$SOLVERZOO_GRIDS are searched too)")
    og.add_argument("--space", default="latent", choices=["latent", "decoded"],
                    help="measure the endpoint error on the solver's state or on the decoded images")
    og.add_argument("--device", default="cpu")
    og.set_defaults(fn=cmd_optimise_grid)
    tr = sub.add_parser("train", help="train a shipped artifact from its Hydra config (solverzoo/models/configs)")
    tr.add_argument("artifact", choices=["vae", "classifier", "dit_eps", "dit_flow", "digits_classifier", "digits_dit", "clip"])
    tr.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. steps=100 batch=32")
    tr.set_defaults(fn=cmd_train)
    return p


def cmd_optimise_grid(args) -> int:
    from solverzoo.bench.grid_optimiser import optimise_grid

    path, data = optimise_grid(args.backbone, args.solver, args.steps, guidance=args.guidance, scale=args.scale,
                               base_grid=args.base_grid, n=args.n, max_evals=args.max_evals, key=args.key,
                               out_dir=args.out, device=args.device, space=args.space)
    print(f"saved {path}; use it as grid=optimised with key={data['key']} "
          f"(sweeps: grids: [{{name: optimised, key: {data['key']}}}])")
    return 0


def cmd_report(args) -> int:
    import os
    from pathlib import Path

    from solverzoo.bench.lock import ResultsLock
    from solverzoo.bench.records import read_only, stale_reason
    from solverzoo.bench.report import report_main
    from solverzoo.bench.sweep import ConfigError, check_output_dir

    results = Path(args.results)
    if not results.is_dir() or not (results / "records").is_dir():
        raise ResultsError(f"{args.results} is not a solverzoo results directory (no records/ folder inside); "
                           "pass the results_dir a `solverzoo bench` run printed")
    out = Path(args.out) if args.out else results / "report"
    try:
        check_output_dir(str(out), "--out")
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    inside = os.path.realpath(out).startswith(os.path.realpath(results) + os.sep)
    _warn_missing_arrays(results)
    if inside:  # writes the table and report into the results dir: one writer at a time
        with ResultsLock(results):
            path = report_main(args.results, str(out))
    else:  # --out elsewhere: the results directory is only read
        why = stale_reason(results)
        if why:
            _warn(f"{results} is marked stale ({why}); this report is built from its valid records only")
        with read_only():
            path = report_main(args.results, str(out))
    print(f"report: {path}")
    return 0


def _warn_missing_arrays(results) -> None:
    """Say which paired comparisons a report cannot make because per-sample arrays are gone."""
    import math

    from solverzoo.bench.records import read_records

    feats = results / "features"
    gone = [r for r in read_records(results) if r["status"] == "ok" and any(
        isinstance(r.get(k), (int, float)) and math.isfinite(r[k]) for k in ("fid", "prompt_accuracy"))
        and not (feats / f"{r['config_hash']}.safetensors").is_file()]
    if gone:
        _warn(f"{len(gone)} cell(s) have no per-sample arrays in {feats} (deleted?): their paired comparisons "
              "(ΔFID, Δprompt accuracy) show n/a; rerun the same `solverzoo bench` command to regenerate them")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) instead of usage + error."""

    def error(self, message):
        print(f"solverzoo: error: {self.prog.split(' ', 1)[-1] if ' ' in self.prog else self.prog}: {message} "
              f"(see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def _user_errors() -> tuple:
    from solverzoo.bench.lock import ResultsLocked
    from solverzoo.bench.sweep import ConfigError
    from solverzoo.timegrid import GridError

    return (UnknownComponentError, PluginError, WeightsError, ResultsError, ResultsLocked, ConfigError, UsageError,
            GridError, ValueError, TypeError, FileNotFoundError, PermissionError, NotADirectoryError,
            IsADirectoryError, UnicodeError)


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 success; 1 a bug (one line; the traceback with --debug); 2 a user error (one
    line, before any expensive work); 3 a sweep with failed cells (see solverzoo.bench.app)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if argv[:1] == ["--debug"]:
        argv = argv[1:]
    if argv[:1] == ["bench"]:  # the Hydra app takes its own command line
        return _bench(argv[1:], debug)
    argv = [a for a in argv if a != "--debug"]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    args.argv = argv[1:]
    try:
        return args.fn(args)
    except _user_errors() as exc:
        if debug:
            raise
        msg = str(exc).replace("\n", " ") or type(exc).__name__
        print(f"solverzoo: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("solverzoo: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug: one line, the traceback behind --debug
        if debug:
            raise
        first = (str(exc).splitlines() or [""])[0]
        print(f"solverzoo: internal error: {type(exc).__name__}: {first} (a bug: please report it with the output of "
              "the same command run with --debug)", file=sys.stderr)
        return 1


def _bench(argv: list[str], debug: bool) -> int:
    """``solverzoo bench``: compose and validate the config here first (one line, exit 2, before
    Hydra creates its run folder inside results_dir and before the backbone loads), take the
    results directory's lock, then run the Hydra app."""
    from solverzoo.bench import app

    argv, dbg = app.bench_argv(argv)
    debug = debug or dbg
    plain = all(not a.startswith("-") for a in argv) and not any(a.lstrip("+~").startswith("hydra") for a in argv)
    if not plain:  # -m, --config-dir, --cfg, hydra.* overrides: Hydra composes; each job validates itself
        return app.main(argv, debug)
    try:
        cfg = _compose(argv)
        from solverzoo.bench.sweep import validate_config
        from solverzoo.bench.lock import ResultsLock

        validate_config(cfg)
        lock = ResultsLock(cfg["results_dir"]).acquire()
    except app.user_errors() as exc:
        if debug:
            raise
        print(f"solverzoo: error: {str(exc).replace(chr(10), ' ')}", file=sys.stderr)
        return 2
    try:
        return app.main(argv, debug)
    finally:
        lock.release()


def _compose(argv: list[str]) -> dict:
    """The resolved config Hydra would compose for ``argv`` (overrides only)."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from solverzoo.bench.app import register_backbone_configs
    from solverzoo.bench.sweep import ConfigError

    register_backbone_configs()
    try:
        with initialize_config_module(config_module="solverzoo.bench.configs", version_base=None):
            cfg = compose(config_name="config", overrides=argv)
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception as exc:  # noqa: BLE001 - Hydra / OmegaConf: a command line it cannot compose
        lines = [x.strip() for x in str(exc).split("Config search path")[0].splitlines() if x.strip()]
        raise ConfigError(" ".join(lines) or type(exc).__name__) from None


if __name__ == "__main__":
    sys.exit(main())
