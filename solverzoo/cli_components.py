"""``solverzoo plugins``, ``verify`` and ``conformance``: the commands about registered components."""
from __future__ import annotations

import json

from solverzoo.cli_common import parse_options
from solverzoo.registry import KINDS, registry


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


TABLE_START, TABLE_END = "<!-- zoo-table:start -->", "<!-- zoo-table:end -->"
TABLE_KINDS = ("solver", "grid", "guidance")


def _source(obj) -> str:
    """The docstring's opening sentence on one line (it names the method and its paper), at most 160 characters."""
    import inspect
    import re

    doc = inspect.getdoc(obj if isinstance(obj, type) or callable(obj) and not hasattr(obj, "fn") else obj.fn) or ""
    para = " ".join(line.strip() for line in doc.split("\n\n")[0].splitlines())
    first = re.split(r"(?<!\bal)(?<!e\.g)(?<!i\.e)\.\s", para, maxsplit=1)[0].rstrip(".")
    if len(first) > 160:  # cut, closing a code span the cut left open
        first = first[:159].rstrip() + ("``" if first[:159].count("``") % 2 else "") + "…"
    return first.replace("|", "\\|") or "(no docstring)"


def zoo_table(origin: str = "solverzoo") -> str:
    """The README's zoo table (markdown) of the solvers, grids and guidance methods that distribution
    ``origin`` registers (built-ins by default, so installed third-party plugins never change it)."""
    from solverzoo.peers import peers

    lines = ["| name | kind | order | evals/step | stochastic | parametrisations | source | also in | origin |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in registry.entries():
        if e.kind not in TABLE_KINDS or e.origin.split(" ")[0] != origin:
            continue
        obj, dash = e.obj, "—"
        if e.kind == "solver":
            cells = [str(obj.order), str(obj.evals_per_step), "yes" if obj.stochastic else "no",
                     f"any (reads {', '.join(obj.needs)})", _source(type(obj))]
        else:
            cells = [dash, dash, dash, "any", _source(obj)]
        cells.append(peers(e.kind, e.name))
        lines.append(f"| `{e.name}` | {e.kind} | " + " | ".join(cells) + f" | {e.origin.split(' ')[0]} |")
    return "\n".join(lines) + "\n"


def replace_table(text: str, table: str, where: str = "README.md") -> str:
    """``text`` with the block between :data:`TABLE_START` and :data:`TABLE_END` replaced by ``table``."""
    if text.count(TABLE_START) != 1 or text.count(TABLE_END) != 1 or text.index(TABLE_START) > text.index(TABLE_END):
        raise ValueError(f"{where} needs exactly one {TABLE_START} line followed by one {TABLE_END} line around the zoo "
                         "table; add them, then run `solverzoo plugins --markdown --readme README.md`")
    head, rest = text.split(TABLE_START)
    return head + TABLE_START + "\n" + table + TABLE_END + rest.split(TABLE_END, 1)[1]


def cmd_plugins(args) -> int:
    if getattr(args, "markdown", False) or getattr(args, "readme", None):
        table = zoo_table()
        if not args.readme:
            print(table, end="")
            return 0
        from pathlib import Path

        path = Path(args.readme)
        path.write_text(replace_table(path.read_text(), table, str(path)))
        print(f"updated the zoo table in {path}")
        return 0
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
                  seed=args.seed, options=parse_options(args.option), schedule_options=parse_options(args.schedule_option))
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
