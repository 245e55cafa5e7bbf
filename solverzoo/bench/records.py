"""Cell records: one JSON file per cell, written atomically (temporary file + fsync + rename),
named by the hash of the cell's resolved config, so a sweep killed at any moment resumes with
every cell exactly once and never a partial record."""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

COLUMNS = ["backbone", "solver", "grid", "steps", "nfe", "guidance", "scale", "n_samples", "fid", "fid_ci_low",
           "fid_ci_high", "kid", "clip_score", "prompt_accuracy", "wall_s", "status", "config_hash",
           "cache", "backbone_evals", "flops_per_sample"]


class ResultsError(ValueError):
    """A results directory that is not one."""


def config_hash(cell: dict) -> str:
    blob = json.dumps(cell, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def records_dir(results_dir: str | Path) -> Path:
    return Path(results_dir) / "records"


def write_record(results_dir: str | Path, record: dict) -> Path:
    d = records_dir(results_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{record['config_hash']}.json"
    tmp = d / f".{record['config_hash']}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        json.dump(_clean(record), fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def write_arrays(results_dir: str | Path, key: str, arrays: dict) -> Path:
    """A cell's per-sample arrays (metric features, prompt hits) as safetensors, atomically, so
    later cells and reports can make paired comparisons."""
    from safetensors.torch import save_file
    import torch

    d = Path(results_dir) / "features"
    d.mkdir(parents=True, exist_ok=True)
    path, tmp = d / f"{key}.safetensors", d / f".{key}.{os.getpid()}.tmp"
    save_file({k: torch.as_tensor(v).contiguous() for k, v in arrays.items() if v is not None}, str(tmp))
    os.replace(tmp, path)
    return path


def read_arrays(results_dir: str | Path, key: str) -> dict | None:
    path = Path(results_dir) / "features" / f"{key}.safetensors"
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - a damaged file only loses the paired comparison
        print(f"solverzoo: warning: unreadable features file {path} ({exc}); skipping the paired comparison")
        return None


def _clean(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no NaN; None reads back as NaN in the table
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def read_record(path: Path) -> dict | None:
    """The record at ``path``, or None (with a message) when it is corrupt."""
    try:
        rec = json.loads(Path(path).read_text())
        if not isinstance(rec, dict) or rec.get("config_hash") != Path(path).stem or "status" not in rec:
            raise ValueError("missing fields or a hash that does not match the file name")
        return rec
    except (OSError, ValueError) as exc:
        print(f"solverzoo: warning: corrupt record {path} ({exc}); the cell will be recomputed")
        return None


def read_records(results_dir: str | Path) -> list[dict]:
    d = records_dir(results_dir)
    if not Path(results_dir).is_dir() or not d.is_dir():
        raise ResultsError(f"{results_dir} is not a solverzoo results directory (no records/ folder inside); "
                           "pass the results_dir a `solverzoo bench` run printed")
    recs = [read_record(p) for p in sorted(d.glob("*.json"))]
    return [r for r in recs if r is not None]


def build_table(results_dir: str | Path):
    """All records as a pandas DataFrame, saved as results.parquet and results.csv."""
    import pandas as pd

    recs = read_records(results_dir)
    if not recs:
        raise ResultsError(f"{results_dir} holds no records yet")
    rows = []
    for r in recs:
        row = {c: r.get(c) for c in COLUMNS}
        for k in ("kid_ci_low", "kid_ci_high", "prompt_accuracy_ci_low", "prompt_accuracy_ci_high", "seed_set",
                  "sampling_s", "backbone_s", "solver_s", "decode_s", "metric_s", "harness_s", "error", "warnings",
                  "sliced_wasserstein", "median_error", "mode_flip_rate", "feature", "reference", "grid_options",
                  "solver_options", "cache_options", "delta_fid", "delta_fid_ci_low", "delta_fid_ci_high",
                  "delta_prompt_accuracy", "delta_prompt_accuracy_ci_low", "delta_prompt_accuracy_ci_high"):
            v = r.get(k)
            row[k] = json.dumps(v) if isinstance(v, (dict, list)) else v
        rows.append(row)
    df = pd.DataFrame(rows)
    df["cache"] = df["cache"].fillna("none")  # records from before the cache axis
    df["backbone_evals"] = pd.to_numeric(df["backbone_evals"], errors="coerce").fillna(pd.to_numeric(df["nfe"], errors="coerce"))
    df["flops_per_sample"] = pd.to_numeric(df["flops_per_sample"], errors="coerce")
    for c in ("fid", "fid_ci_low", "fid_ci_high", "kid", "clip_score", "prompt_accuracy", "wall_s", "scale"):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    df = df.sort_values(["backbone", "solver", "grid", "cache", "guidance", "scale", "steps", "seed_set"]).reset_index(drop=True)
    out = Path(results_dir)
    df.to_parquet(out / "results.parquet", index=False)
    df.to_csv(out / "results.csv", index=False)
    return df


def arrays_to_numpy(arrays: dict) -> dict:
    """Per-sample arrays as read back by :func:`read_arrays` -> numpy (float64) and floats."""
    import torch

    return {k: (v.double().numpy() if v.ndim else float(v)) if isinstance(v, torch.Tensor) else v for k, v in arrays.items()}
