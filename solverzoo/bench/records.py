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

import hashlib
import json
import math
import os
import re
import sys
from pathlib import Path

COLUMNS = ["backbone", "solver", "grid", "steps", "nfe", "guidance", "scale", "n_samples", "fid", "fid_ci_low",
           "fid_ci_high", "kid", "clip_score", "prompt_accuracy", "wall_s", "status", "config_hash",
           "cache", "backbone_evals", "flops_per_sample"]


class ResultsError(ValueError):
    """A results directory that is not one."""


class RecordError(ValueError):
    """A record that fails the schema (reported, and its cell recomputed)."""


# --- the record schema -------------------------------------------------------------------------
# The fields whose values make up the cell's config (hashed into ``config_hash``); ``cache`` and
# ``cache_options`` only where the cell uses a cache (no-cache hashes predate the cache axis).
CONFIG_FIELDS = ("backbone", "backbone_weights", "solver", "solver_options", "grid", "grid_options", "steps",
                 "guidance", "scale", "n_samples", "seed_set", "metrics")
STATUSES = ("ok", "failed")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _nan_or(pred):
    """A check passing None / NaN (a metric not computed) or a number satisfying ``pred``."""
    def check(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return True
        return _is_num(v) and math.isfinite(v) and pred(v)
    return check


_STR, _DICT = (lambda v: isinstance(v, str)), (lambda v: isinstance(v, dict))
_POS_INT, _NONNEG_INT = (lambda v: _is_int(v) and v >= 1), (lambda v: _is_int(v) and v >= 0)
_ANY_NUM = _nan_or(lambda v: True)
_NONNEG = _nan_or(lambda v: v >= 0)
_UNIT = _nan_or(lambda v: 0.0 <= v <= 1.0)

# field -> (check, what a valid value is). Required for every record:
REQUIRED = {
    "config_hash": (lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{16}", v) is not None, "16 hex digits"),
    "status": (lambda v: v in STATUSES, "'ok' or 'failed'"),
    "backbone": (_STR, "a string"), "backbone_weights": (_STR, "a string"), "solver": (_STR, "a string"),
    "solver_options": (_DICT, "an object"), "grid": (_STR, "a string"), "grid_options": (_DICT, "an object"),
    "steps": (_POS_INT, "a positive integer"), "guidance": (_STR, "a string"),
    "scale": (lambda v: _is_num(v) and math.isfinite(v), "a finite number"),
    "n_samples": (_POS_INT, "a positive integer"), "seed_set": (_NONNEG_INT, "a non-negative integer"),
    "metrics": (_DICT, "an object"),
}
# required where status == "ok" (a finished cell has a cost and its metric fields, NaN where skipped)
REQUIRED_OK = {
    "nfe": (_POS_INT, "a positive integer"), "wall_s": (_nan_or(lambda v: v >= 0), "a number >= 0"),
    "fid": (_NONNEG, "a finite number >= 0, or NaN"), "prompt_accuracy": (_UNIT, "a number in [0, 1], or NaN"),
    "warnings": (lambda v: isinstance(v, list) and all(isinstance(w, str) for w in v), "a list of strings"),
}
# checked where present (any status)
OPTIONAL = {
    "nfe": (lambda v: v is None or _POS_INT(v), "a positive integer"),
    "error": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "cache": (_STR, "a string"), "cache_options": (_DICT, "an object"),
    "fid_ci_low": (_NONNEG, "a finite number >= 0, or NaN"), "fid_ci_high": (_NONNEG, "a finite number >= 0, or NaN"),
    "kid": (_ANY_NUM, "a finite number, or NaN"), "kid_ci_low": (_ANY_NUM, "a finite number, or NaN"),
    "kid_ci_high": (_ANY_NUM, "a finite number, or NaN"), "clip_score": (_ANY_NUM, "a finite number, or NaN"),
    "prompt_accuracy_ci_low": (_UNIT, "a number in [0, 1], or NaN"),
    "prompt_accuracy_ci_high": (_UNIT, "a number in [0, 1], or NaN"),
    "backbone_evals": (_NONNEG, "a number >= 0, or NaN"), "flops_per_sample": (_NONNEG, "a number >= 0, or NaN"),
    "sliced_wasserstein": (_NONNEG, "a number >= 0, or NaN"), "median_error": (_NONNEG, "a number >= 0, or NaN"),
    "mode_flip_rate": (_UNIT, "a number in [0, 1], or NaN"),
    "sampling_s": (_NONNEG, "a number >= 0, or NaN"), "backbone_s": (_ANY_NUM, "a number, or NaN"),
    "solver_s": (_ANY_NUM, "a number, or NaN"), "decode_s": (_ANY_NUM, "a number, or NaN"),
    "metric_s": (_ANY_NUM, "a number, or NaN"), "harness_s": (_ANY_NUM, "a number, or NaN"),
    "delta_prompt_accuracy": (_nan_or(lambda v: -1.0 <= v <= 1.0), "a number in [-1, 1], or NaN"),
    "warnings": (lambda v: isinstance(v, list) and all(isinstance(w, str) for w in v), "a list of strings"),
    "feature": (lambda v: v is None or isinstance(v, (str, dict)), "a string or object"),
    "reference": (lambda v: v is None or isinstance(v, (str, dict)), "a string or object"),
}
# metric families added over time: any field starting with one of these is a number or NaN
NUMERIC_PREFIXES = ("err_converged", "psnr_converged", "fd_converged", "fid_inf", "kid_ci_")
# ... except their text companions (``err_converged_note``, ``fid_inf_ci_method``, ...)
TEXT_SUFFIXES = ("_note", "_method")
# every declared field, for the docs: REQUIRED | REQUIRED_OK | OPTIONAL; any other field is
# allowed (the schema is extensible); unknown numeric fields become numeric table columns.
SCHEMA = {**OPTIONAL, **REQUIRED_OK, **REQUIRED}


def record_config(rec: dict) -> dict:
    """The cell config a record was made from (what its ``config_hash`` hashes)."""
    cell = {k: rec[k] for k in CONFIG_FIELDS if k in rec}
    if rec.get("cache", "none") not in (None, "none"):
        cell["cache"], cell["cache_options"] = rec["cache"], rec.get("cache_options", {})
    return cell


def validate_record(rec, name: str | None = None) -> dict:
    """``rec`` if it satisfies :data:`SCHEMA` (and its hash matches its config and ``name``, the
    file's stem), else :class:`RecordError` naming the first problem."""
    if not isinstance(rec, dict):
        raise RecordError(f"not a JSON object but {type(rec).__name__}")
    missing = [k for k in REQUIRED if k not in rec]
    if rec.get("status") == "ok":
        missing += [k for k in REQUIRED_OK if k not in rec]
    if missing:
        raise RecordError(f"missing field(s) {', '.join(missing)}")
    checks = dict(OPTIONAL, **REQUIRED, **(REQUIRED_OK if rec["status"] == "ok" else {}))
    for k, v in rec.items():
        if k in checks:
            ok, want = checks[k]
        elif k.startswith(NUMERIC_PREFIXES) and not k.endswith(TEXT_SUFFIXES):
            ok, want = _ANY_NUM, "a finite number, or NaN"
        else:
            continue  # an unknown field: allowed (e.g. a newer metric), not checked
        try:
            good = ok(v)
        except Exception:  # noqa: BLE001 - a check that cannot even run is a failed check
            good = False
        if not good:
            raise RecordError(f"field {k!r} = {_short(v)} is not {want}")
    if rec["status"] == "failed" and not isinstance(rec.get("error"), str):
        raise RecordError("a failed record must say why (field 'error')")
    lo, hi = rec.get("fid_ci_low"), rec.get("fid_ci_high")
    if _is_num(lo) and _is_num(hi) and lo > hi:
        raise RecordError(f"fid_ci_low {lo} > fid_ci_high {hi}")
    want_hash = config_hash(record_config(rec))
    if rec["config_hash"] != want_hash:
        raise RecordError(f"config_hash {rec['config_hash']} is not the hash of the record's own config ({want_hash})")
    if name is not None and rec["config_hash"] != name:
        raise RecordError(f"config_hash {rec['config_hash']} does not match the file name {name}.json")
    return rec


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


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
              if k not in COLUMNS and k not in TABLE_EXTRAS and k not in _NOT_IN_TABLE and (_is_num(v) or v is None)}
    extras = sorted(k for k in extras if all(r.get(k) is None or _is_num(r.get(k)) for r in recs))
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
    return df.sort_values(["backbone", "solver", "grid", "cache", "guidance", "scale", "steps", "seed_set"]).reset_index(drop=True)


def arrays_to_numpy(arrays: dict) -> dict:
    """Per-sample arrays as read back by :func:`read_arrays` -> numpy (float64) and floats."""
    import torch

    return {k: (v.double().numpy() if v.ndim else float(v)) if isinstance(v, torch.Tensor) else v for k, v in arrays.items()}
