"""Checking a resolved sweep config before anything expensive runs: every name registered, every
count a positive integer, the device available, the output folders writable. A problem is a
:class:`ConfigError`: one line saying what is wrong and what to do (exit code 2)."""
from __future__ import annotations

import math
import os
from pathlib import Path

from solverzoo.registry import registry


class ConfigError(ValueError):
    """A sweep config a user got wrong: one line, exit code 2, before anything expensive runs."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def _known(kind: str, name, key: str) -> None:
    from solverzoo.registry import UnknownComponentError

    _need(isinstance(name, str), f"{key}: {name!r} is not a {kind} name")
    try:
        registry.get(kind, name)
    except UnknownComponentError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _list(sw: dict, key: str, example: str) -> list:
    v = sw.get(key)
    _need(isinstance(v, (list, tuple)), f"sweep.{key} must be a list (e.g. sweep.{key}={example}), not {v!r}")
    _need(len(v) > 0, f"sweep.{key} is empty: nothing to run; name at least one (e.g. sweep.{key}={example})")
    return list(v)


def check_output_dir(path, key: str) -> None:
    """``path`` is (or can be made) a writable directory: else a :class:`ConfigError`."""
    import tempfile

    _need(isinstance(path, str) and path.strip() != "", f"{key} must be a folder path, not {path!r}")
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{key} {path} is a file, not a directory; pass a folder (it is created if missing)")
    a = p
    while not a.exists():
        a = a.parent
    if not a.is_dir():
        raise ConfigError(f"{key} {path} cannot be created: {a} is a file, not a directory")
    try:  # an unnamed temporary file (O_TMPFILE where supported): proves writability, leaves nothing behind
        with tempfile.TemporaryFile(dir=a):
            pass
    except OSError as exc:
        import errno

        why = f": {exc.strerror}" if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM, errno.ENOSPC) else ""
        raise ConfigError(f"{key} {path} is not writable (cannot create a file in {a}{why}); "
                          "pass a folder you can write to") from None


def check_device(device) -> None:
    import torch

    _need(isinstance(device, str), f"device must be a string such as cpu or cuda, not {device!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device={device!r} is not a torch device (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        _need(torch.cuda.is_available(), f"device={device} but this torch build ({torch.__version__}) has no usable CUDA "
                                         "device; use device=cpu")
        _need(dev.index is None or dev.index < torch.cuda.device_count(),
              f"device={device} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif dev.type == "mps":
        _need(torch.backends.mps.is_available(), f"device={device} but MPS is not available here; use device=cpu")
    else:
        _need(dev.type == "cpu", f"device={device} is not supported (use cpu or cuda)")


def _local_path_like(v: str) -> bool:
    return v.startswith(("/", "./", "../", "~")) or os.sep in v and Path(v).expanduser().exists()


def validate_config(cfg: dict, paths: bool = True) -> None:
    """Check the resolved sweep config before anything expensive (no backbone is loaded): every
    name registered, every count a positive integer, the device available, the output folders
    writable. Raises :class:`ConfigError` with one line saying what is wrong and what to do."""
    from solverzoo.bench.autoregressive import AUTOREGRESSIVE, option_problem

    _need(isinstance(cfg.get("backbone"), dict) and isinstance(cfg["backbone"].get("name"), str),
          "backbone must name a registered backbone (e.g. backbone=gmm)")
    _known("backbone", cfg["backbone"]["name"], "backbone")
    sw = cfg.get("sweep")
    _need(isinstance(sw, dict), "sweep must be a sweep config (e.g. sweep=quick)")
    for s in _list(sw, "solvers", "[euler,dpmpp_2m]"):
        if s != AUTOREGRESSIVE:  # the reserved sampler of a generator backbone (a next-token model)
            _known("solver", s, "sweep.solvers")
    for g in _list(sw, "grids", "[default,karras]"):
        if g == "default":
            continue
        name = g.get("name") if isinstance(g, dict) else g
        _need(name is not None, f"sweep.grids entry {g!r} needs a name (e.g. {{name: karras, rho: 7}})")
        _known("grid", name, "sweep.grids")
    for st in _list(sw, "steps", "[5,10]"):
        _need(_is_int(st) and st >= 1, f"sweep.steps: {st!r} is not a positive integer (e.g. sweep.steps=[5,10])")
    for g in _list(sw, "guidance", "[{name:cfg,scale:4.0}]"):
        _need(isinstance(g, dict) and "name" in g and "scale" in g,
              f"sweep.guidance entry {g!r} must look like {{name: cfg, scale: 4.0}}")
        sc = g["scale"]
        _need(isinstance(sc, (int, float)) and not isinstance(sc, bool) and math.isfinite(sc),
              f"sweep.guidance scale {sc!r} (guidance {g['name']}) is not a finite number")
        if g["name"] != "none":
            _known("guidance", g["name"], "sweep.guidance")
            try:
                registry.get("guidance", g["name"])(scale=float(sc))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"sweep.guidance {g['name']} scale {sc}: {exc}") from None
    for c in sw.get("caches") or ["none"]:
        name = c.get("name") if isinstance(c, dict) else c
        if name != "none":
            _known("cache", name, "sweep.caches")
    n = sw.get("n_samples")
    _need(n == "auto" or (_is_int(n) and n >= 1),
          f"sweep.n_samples={n!r} must be a positive integer (e.g. sweep.n_samples=64) or auto (with sweep.budget_s)")
    b = sw.get("budget_s")
    _need(b is None or (isinstance(b, (int, float)) and not isinstance(b, bool) and b > 0),
          f"sweep.budget_s={b!r} must be a positive number of seconds (e.g. sweep.budget_s=600) or null")
    _need(n != "auto" or b is not None, "sweep.n_samples=auto chooses N to fit sweep.budget_s: set it (e.g. sweep.budget_s=600)")
    for s in _list(sw, "seed_sets", "[0]"):
        _need(_is_int(s) and s >= 0, f"sweep.seed_sets: {s!r} is not a non-negative integer")
    so = sw.get("solver_options", {})
    _need(isinstance(so, dict) and all(isinstance(v, dict) for v in so.values()),
          "sweep.solver_options must map a solver name to its options, e.g. {ddim: {eta: 0.5}}")
    for name, opts in so.items():
        if name == AUTOREGRESSIVE:
            why = option_problem(opts)
            _need(why is None, f"sweep.solver_options.{AUTOREGRESSIVE}: {why}")
            continue
        _known("solver", name, "sweep.solver_options")
        try:
            registry.get("solver", name).check_options(opts)
        except TypeError as exc:
            raise ConfigError(f"sweep.solver_options: {exc}") from None
    bs = cfg.get("batch_size")
    _need(_is_int(bs) and bs >= 1, f"batch_size={bs!r} must be a positive integer (e.g. batch_size=64)")
    for key in ("fail_fast", "progress", "keep_going", "retry_failed", "plan_only"):
        _need(cfg.get(key) is None or isinstance(cfg[key], bool), f"{key}={cfg[key]!r} must be true or false")
    check_device(cfg.get("device", "cpu"))
    _validate_metrics(cfg.get("metrics") or {})
    if paths:
        check_output_dir(cfg.get("results_dir"), "results_dir")
        check_output_dir(cfg.get("report_dir"), "report_dir")


def _validate_metrics(m: dict) -> None:
    for key in ("fid", "kid", "prompt_accuracy", "clip_score"):
        _need(isinstance(m.get(key), bool), f"metrics.{key}={m.get(key)!r} must be true or false")
    _need(m.get("feature") in ("domain", "inception", "clip"),
          f"metrics.feature={m.get('feature')!r} must be domain, inception or clip")
    b = m.get("bootstrap")
    _need(_is_int(b) and b >= 0, f"metrics.bootstrap={b!r} must be a non-negative integer")
    ci = m.get("ci")
    _need(isinstance(ci, (int, float)) and not isinstance(ci, bool) and 0 < ci < 1, f"metrics.ci={ci!r} must lie in (0, 1)")
    k = m.get("kid_subset_size")
    _need(_is_int(k) and k >= 2, f"metrics.kid_subset_size={k!r} must be an integer >= 2")
    rc = m.get("reference") or {}
    _need(rc.get("kind") in ("world", "folder", "npz"), f"metrics.reference.kind={rc.get('kind')!r} must be world, folder or npz")
    _need(_is_int(rc.get("n")) and rc["n"] >= 2, f"metrics.reference.n={rc.get('n')!r} must be an integer >= 2")
    _need(_is_int(rc.get("seed")), f"metrics.reference.seed={rc.get('seed')!r} must be an integer")
    if rc["kind"] == "folder":
        _need(isinstance(rc.get("path"), str) and Path(rc["path"]).expanduser().is_dir(),
              f"metrics.reference.kind=folder needs metrics.reference.path=DIR of images; {rc.get('path')!r} is not a folder")
    if rc["kind"] == "npz":
        _need(isinstance(rc.get("path"), str) and Path(rc["path"]).expanduser().is_file(),
              f"metrics.reference.kind=npz needs metrics.reference.path=FILE.npz; {rc.get('path')!r} is not a file")
    w = m.get("inception_weights")
    if w is not None:
        _need(isinstance(w, str) and Path(w).expanduser().is_file(),
              f"metrics.inception_weights={w!r} is not a file (give the local pt_inception-2015-12-05 weights)")
    c = m.get("clip_model")
    if c is not None:
        _need(isinstance(c, str) and c.strip() != "", f"metrics.clip_model={c!r} must be a path or a model name")
        if _local_path_like(c):
            _need(Path(c).expanduser().exists(), f"metrics.clip_model={c} does not exist (give a local CLIP folder)")
