"""Cell records: one JSON file per cell, written atomically (temporary file + fsync + rename),
named by the hash of the cell's resolved config, so a sweep killed at any moment resumes with
every cell exactly once and never a partial record.

A record counts as done only when it passes :func:`validate_record` against :data:`SCHEMA`
(required fields, types, ranges, and a ``config_hash`` equal both to the hash of the record's own
config fields and to its file name). An invalid record is reported in one line and its cell is
recomputed; it never reaches the table. The table (``results.parquet`` / ``results.csv``) is
written atomically from validated records only; a build that fails removes the old table and
leaves a ``STALE`` marker saying why, so nothing stale looks current."""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from solverzoo.bench.record_schema import RecordError, config_hash, is_num, record_config, validate_record

__all__ = ["COLUMNS", "RecordError", "ResultsError", "build_table", "config_hash", "read_arrays", "read_record", "read_records",
           "record_config", "records_dir", "validate_record", "write_arrays", "write_record"]

COLUMNS = ["backbone", "solver", "grid", "steps", "nfe", "guidance", "scale", "n_samples", "fid", "fid_ci_low",
           "fid_ci_high", "kid", "clip_score", "prompt_accuracy", "wall_s", "status", "config_hash",
           "cache", "backbone_evals", "flops_per_sample"]


class ResultsError(ValueError):
    """A results directory that is not one."""


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
    import torch
    from safetensors.torch import save_file

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


def read_record(path: Path, quiet: bool = False) -> dict | None:
    """The validated record at ``path``, or None (with a one-line message naming the file and the
    problem) when it is unreadable or fails :func:`validate_record`: its cell is then recomputed."""
    try:
        rec = json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=_reject_constant)
        return validate_record(rec, Path(path).stem)
    except (OSError, ValueError) as exc:  # RecordError, JSONDecodeError and UnicodeDecodeError are ValueErrors
        if not quiet:
            print(f"solverzoo: warning: invalid record {path}: {exc}; ignored (a sweep recomputes its cell)",
                  file=sys.stderr)
        return None


def _reject_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


def read_records(results_dir: str | Path) -> list[dict]:
    """Every valid record of ``results_dir`` (invalid ones reported and left out)."""
    d = records_dir(results_dir)
    if not Path(results_dir).is_dir() or not d.is_dir():
        raise ResultsError(f"{results_dir} is not a solverzoo results directory (no records/ folder inside); "
                           "pass the results_dir a `solverzoo bench` run printed")
    recs = [read_record(p) for p in sorted(d.glob("*.json"))]
    return [r for r in recs if r is not None]


STALE = "STALE"


def mark_stale(results_dir: str | Path, why: str, report_dir: str | Path | None = None) -> None:
    """After a failed table / report build: delete the old table (and the report's index) and
    leave ``STALE`` saying why, so no previous table or report passes for current."""
    out = Path(results_dir)
    for p in (out / "results.parquet", out / "results.csv",
              Path(report_dir) / "index.md" if report_dir is not None else out / "report" / "index.md"):
        with _suppress():
            p.unlink()
    with _suppress():
        (out / STALE).write_text(f"the table / report of this results directory could not be built: {why}\n"
                                 "rerun `solverzoo bench` (same overrides) or `solverzoo report` once fixed\n")


def stale_reason(results_dir: str | Path) -> str | None:
    p = Path(results_dir) / STALE
    return p.read_text().splitlines()[0] if p.is_file() else None


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)


def _atomic(write, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        with _suppress():
            tmp.unlink()


# extra record fields carried into the table (dicts / lists as JSON text)
TABLE_EXTRAS = ("kid_ci_low", "kid_ci_high", "prompt_accuracy_ci_low", "prompt_accuracy_ci_high", "seed_set",
                "sampling_s", "backbone_s", "solver_s", "decode_s", "metric_s", "harness_s", "error", "warnings",
                "sliced_wasserstein", "median_error", "mode_flip_rate", "feature", "reference", "grid_options",
                "solver_options", "cache_options", "delta_fid", "delta_fid_ci_low", "delta_fid_ci_high",
                "delta_prompt_accuracy", "delta_prompt_accuracy_ci_low", "delta_prompt_accuracy_ci_high")
_NOT_IN_TABLE = frozenset(("metrics", "trace", "backbone_weights"))


def build_table(results_dir: str | Path, write: bool | None = None, report_dir: str | Path | None = None):
    """All valid records as a pandas DataFrame, saved atomically as results.parquet and
    results.csv (unless ``write`` is False, or None inside :func:`read_only`). A build that fails
    marks the results directory stale (:func:`mark_stale`) and raises :class:`ResultsError`."""
    write = _WRITE[-1] if write is None else write
    try:
        df = _table(results_dir)
        if write:
            out = Path(results_dir)
            _atomic(lambda t: df.to_parquet(t, index=False), out / "results.parquet")
            _atomic(lambda t: df.to_csv(t, index=False), out / "results.csv")
            with _suppress():
                (out / STALE).unlink()
        return df
    except ResultsError:
        raise
    except Exception as exc:  # noqa: BLE001 - never leave the previous table looking current
        if write:
            mark_stale(results_dir, f"{type(exc).__name__}: {exc}", report_dir)
        raise ResultsError(f"could not build the table of {results_dir}: {type(exc).__name__}: {exc}"
                           + ("; the old table and report index were removed (see STALE)" if write else "")) from exc


_WRITE = [True]


class read_only:
    """Inside ``with read_only():`` :func:`build_table` does not write the table (``solverzoo
    report --out ELSEWHERE`` leaves the results directory untouched)."""

    def __enter__(self):
        _WRITE.append(False)

    def __exit__(self, *exc):
        _WRITE.pop()


def _table(results_dir: str | Path):
    import pandas as pd

    recs = read_records(results_dir)
    if not recs:
        raise ResultsError(f"{results_dir} holds no valid records yet")
    extras = {k for r in recs for k, v in r.items()
              if k not in COLUMNS and k not in TABLE_EXTRAS and k not in _NOT_IN_TABLE and (is_num(v) or v is None)}
    extras = sorted(k for k in extras if all(r.get(k) is None or is_num(r.get(k)) for r in recs))
    rows = []
    for r in recs:
        row = {c: r.get(c) for c in COLUMNS}
        for k in TABLE_EXTRAS:
            v = r.get(k)
            row[k] = json.dumps(v) if isinstance(v, (dict, list)) else v
        for k in extras:  # newer numeric metrics (e.g. err_converged*, fid_inf*): numeric columns
            row[k] = r.get(k)
        rows.append(row)
    df = pd.DataFrame(rows)
    df["cache"] = df["cache"].fillna("none")  # records from before the cache axis
    df["backbone_evals"] = pd.to_numeric(df["backbone_evals"], errors="coerce").fillna(pd.to_numeric(df["nfe"], errors="coerce"))
    df["flops_per_sample"] = pd.to_numeric(df["flops_per_sample"], errors="coerce")
    for c in ("fid", "fid_ci_low", "fid_ci_high", "kid", "clip_score", "prompt_accuracy", "wall_s", "scale", *extras):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    return df.sort_values(
        ["backbone", "solver", "grid", "cache", "guidance", "scale", "steps", "seed_set"]).reset_index(drop=True)


def arrays_to_numpy(arrays: dict) -> dict:
    """Per-sample arrays as read back by :func:`read_arrays` -> numpy (float64) and floats."""
    import torch

    return {k: (v.double().numpy() if v.ndim else float(v)) if isinstance(v, torch.Tensor) else v for k, v in arrays.items()}
