"""What every report section reads: the results table (with the columns of newer records that
an older ``build_table`` does not carry), its ok / failed rows, the paired groups and why a
metric was not measured."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from solverzoo.bench.formatting import cache_label, grid_label, label, series
from solverzoo.bench.paired import PairedGroup, load_reference, seed_for
from solverzoo.bench.records import build_table, records_dir

CONVERGED_COLUMNS = [f"{m}{s}" for m in ("err_converged", "psnr_converged", "fd_converged", "fid_inf")
                     for s in ("", "_ci_low", "_ci_high")]
EXTRA_COLUMNS = CONVERGED_COLUMNS + ["kid_ci_low", "kid_ci_high", "err_converged_note", "psnr_converged_note",
                                     "fd_converged_note", "fid_inf_note", "kid_note", "kid_std"]
NOTES = {c for c in EXTRA_COLUMNS if c.endswith("_note")}
PAIR_KEYS = ["backbone", "guidance", "scale", "seed_set", "n_samples"]
"""Cells that agree on these share sample i's noise and prompt: their differences are paired."""
SETTING_KEYS = ["backbone", "guidance", "scale"]


@dataclass
class Ctx:
    """The table, its ok / failed rows, where to write figures, and caches of derived results."""

    df: Any
    ok: Any
    failed: Any
    results_dir: Path
    out: Path
    backbones: list
    note: str
    reference: dict | None = None
    groups: dict = field(default_factory=dict)
    derived: dict = field(default_factory=dict)

    def group(self, rows) -> PairedGroup:
        """The paired group of ``rows`` (all of one :data:`PAIR_KEYS` value)."""
        r0 = rows.iloc[0]
        key = tuple(_hashable(r0[k]) for k in PAIR_KEYS)
        if key not in self.groups:
            members = self.ok
            for k, v in zip(PAIR_KEYS, key):
                members = members[[_hashable(x) == v for x in members[k]]]
            self.groups[key] = PairedGroup(self.results_dir, list(members.config_hash), int(r0.n_samples),
                                           self.reference, seed_for(r0.seed_set))
        return self.groups[key]

    def seeds_text(self, rows=None) -> str:
        rows = self.ok if rows is None else rows
        n = sorted({int(x) for x in rows.n_samples.dropna()})
        s = sorted({int(x) for x in rows.seed_set.dropna()})
        return f"N = {', '.join(map(str, n))} samples per cell, seed set{'s' if len(s) != 1 else ''} {s}"


def _hashable(v):
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def load_context(results_dir: Path, out: Path) -> Ctx:
    df = augment(build_table(results_dir), results_dir)
    df["grid_label"] = [grid_label(g, o) for g, o in zip(df.grid, df.grid_options)]
    df["cache_label"] = [cache_label(c, o) for c, o in zip(df.cache, df.get("cache_options", [None] * len(df)))]
    df["series"] = [series(a, b, k) for a, b, k in zip(df.solver, df.grid_label, df.cache_label)]
    df["cell"] = [f"{s} {int(st)} steps" for s, st in zip(df.series, df.steps)]
    df["setting"] = [label(r) for _, r in df.iterrows()]
    ok = df[df.status == "ok"].copy()
    n_set = sorted(set(int(n) for n in df.n_samples))
    seeds = sorted(set(int(s) for s in df.seed_set.dropna()))
    note = f"N = {', '.join(map(str, n_set))} samples per cell; seed sets {seeds}; results: {results_dir}"
    return Ctx(df, ok, df[df.status != "ok"], results_dir, out, sorted(df.backbone.unique()), note,
               load_reference(results_dir))


def augment(df, results_dir: Path):
    """Add :data:`EXTRA_COLUMNS` that the records hold but the table lacks (NaN where absent)."""
    missing = [c for c in EXTRA_COLUMNS if c not in df.columns]
    if missing:
        recs = {}
        for p in sorted(records_dir(results_dir).glob("*.json")):
            try:
                rec = json.loads(p.read_text())
            except (OSError, ValueError):
                continue  # build_table has already said which record is corrupt
            if isinstance(rec, dict):
                recs[p.stem] = rec
        for c in missing:
            df[c] = [recs.get(h, {}).get(c) for h in df.config_hash]
    for c in EXTRA_COLUMNS:
        if c not in NOTES:
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def measured(df, col: str) -> bool:
    return col in df and pd.to_numeric(df[col], errors="coerce").notna().any()


def not_measured(df, col: str) -> str:
    """Why ``col`` has no values: the records predate it, or the notes / warnings they carry."""
    note_col = col + "_note"
    if note_col in df and df[note_col].notna().any():
        notes = sorted({str(n) for n in df[note_col].dropna()})
        return f"not measured: {'; '.join(notes)}"
    if col not in df or df[col].isna().all():
        ws = sorted({w for ws in df.get("warnings", pd.Series(dtype=object)).dropna() for w in json.loads(ws)
                     if col.split("_")[0] in w})
        if ws:
            return "not measured: " + "; ".join(ws)
        return (f"not measured: no record in these results has `{col}` (they were written before the harness "
                "measured it, or the metric was disabled); rerun the sweep to fill it")
    return "not measured"
