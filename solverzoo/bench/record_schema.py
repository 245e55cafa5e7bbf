"""The declared schema of a cell record: required fields, types and ranges, and the rule that a
record's ``config_hash`` is the hash of its own config. A record that fails it is reported and
its cell recomputed, never shown."""
from __future__ import annotations

import hashlib
import json
import math
import re


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


def is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _nan_or(pred):
    """A check passing None / NaN (a metric not computed) or a number satisfying ``pred``."""
    def check(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return True
        return is_num(v) and math.isfinite(v) and pred(v)
    return check


_ANY_NUM = _nan_or(lambda v: True)


_NONNEG = _nan_or(lambda v: v >= 0)


_UNIT = _nan_or(lambda v: 0.0 <= v <= 1.0)
_STR, _DICT = (lambda v: isinstance(v, str)), (lambda v: isinstance(v, dict))
_POS_INT, _NONNEG_INT = (lambda v: _is_int(v) and v >= 1), (lambda v: _is_int(v) and v >= 0)


# field -> (check, what a valid value is). Required for every record:
REQUIRED = {
    "config_hash": (lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{16}", v) is not None, "16 hex digits"),
    "status": (lambda v: v in STATUSES, "'ok' or 'failed'"),
    "backbone": (_STR, "a string"), "backbone_weights": (_STR, "a string"), "solver": (_STR, "a string"),
    "solver_options": (_DICT, "an object"), "grid": (_STR, "a string"), "grid_options": (_DICT, "an object"),
    "steps": (_POS_INT, "a positive integer"), "guidance": (_STR, "a string"),
    "scale": (lambda v: is_num(v) and math.isfinite(v), "a finite number"),
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
    "tokens_per_sample": (_NONNEG, "a number >= 0, or NaN"),  # a generator backbone's cells (autoregressive)
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
    if is_num(lo) and is_num(hi) and lo > hi:
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
