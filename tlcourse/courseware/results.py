"""Notebook profiles and recorded results.

Every notebook has a ``parameters`` cell (papermill) with ``PROFILE`` and optional overrides.
:func:`resolve_profile` turns that into the concrete knobs, so nothing below the parameters cell
hard-codes a size or an epoch count. :func:`record` writes the notebook's key results to
``build/metrics/<notebook-stem>.json``, which CI checks against the thresholds a notebook declares
in its own metadata (``metadata.tlcourse.checks``) and which people can diff between runs.

A metrics file is a result, not a cache: silently starting it over would drop the values earlier
cells (or the other notebook of a classroom machine) recorded. So a damaged file is a
:class:`tlcourse._io.DamagedFileError` that names it and says to delete it and run the notebook
again, from both :func:`record` and :func:`load_metrics`. Concurrent :func:`record` calls on one
file (two kernels) are serialised by a lock, so every merge keeps the other's values.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping

from tlcourse._io import atomic_write_text, locked, read_json, read_or_explain
from tlcourse.evaluation import Estimate
from tlcourse.paths import build_dir

PROFILES = ("ci", "default", "gpu")
PROFILE_ENV = "TLCOURSE_PROFILE"


def default_profile() -> str:
    """``$TLCOURSE_PROFILE`` if set (nbval runs use it), else ``"default"``."""
    return os.environ.get(PROFILE_ENV, "default")


def resolve_profile(profile: str, table: Mapping[str, Mapping[str, Any]], **overrides: Any) -> dict[str, Any]:
    """The knobs of ``profile`` from ``table``, with every override that is not ``None`` applied.

    >>> resolve_profile("ci", {"ci": {"n": 10}, "default": {"n": 100}}, n=None)
    {'n': 10}
    """
    if profile not in table:
        raise ValueError(f"Unknown profile {profile!r}; this notebook has profiles: {', '.join(table)}")
    knobs = dict(table[profile])
    for key, value in overrides.items():
        if key not in knobs:
            raise ValueError(f"Unknown knob {key!r}; profile {profile!r} has: {', '.join(knobs)}")
        if value is not None:
            knobs[key] = value
    return knobs


def _plain(value: Any) -> Any:
    """JSON-friendly version of numbers from numpy or torch; an interval
    (:class:`tlcourse.evaluation.Estimate`) becomes ``{"value", "low", "high", "n", "level"}``."""
    if isinstance(value, Estimate):
        return _plain({"value": value.value, "low": value.low, "high": value.high, "n": value.n,
                       "level": value.level})
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    raise TypeError(f"Cannot record a {type(value).__name__}; record numbers, strings, lists or dicts")


def metrics_path(notebook: str) -> Path:
    """``build/metrics/<stem>.json`` for a notebook name or path."""
    return build_dir() / "metrics" / f"{Path(notebook).stem}.json"


def _read_record(path: Path) -> dict[str, Any]:
    """The metrics file's JSON object, ``{}`` if absent; a damaged file raises ``DamagedFileError``."""
    if not path.is_file():
        return {}
    return read_or_explain(
        path, read_json, what="metrics file",
        remedy="Delete it and run the notebook again to record its metrics anew.",
        check=lambda doc: None if isinstance(doc, dict) and isinstance(doc.get("metrics", {}), dict)
        else "it is JSON, but not an object with a 'metrics' object")


def record(notebook: str, metrics: Mapping[str, Any], *, profile: str | None = None) -> dict[str, Any]:
    """Merge ``metrics`` into the notebook's metrics file and return the whole record.

    Values are kept as plain JSON (numpy/torch scalars are converted). The file is replaced
    atomically so an interrupted run never leaves half a JSON document, and the read-merge-write
    holds a lock so that two processes recording at once both keep their values.
    """
    path = metrics_path(notebook)
    plain = _plain(dict(metrics))
    with locked(path):
        current = _read_record(path)
        current.setdefault("metrics", {}).update(plain)
        current["notebook"] = Path(notebook).stem
        if profile is not None:
            current["profile"] = profile
        current["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        atomic_write_text(path, json.dumps(current, indent=2, sort_keys=True))
    return current


def load_metrics(notebook: str) -> dict[str, Any]:
    """The recorded metrics of a notebook (``{}`` if it has not recorded any)."""
    return dict(_read_record(metrics_path(notebook)).get("metrics", {}))


def check_metrics(metrics: Mapping[str, Any], checks: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Compare recorded metrics with thresholds; returns a list of failures (empty when all pass).

    ``checks`` maps a metric name to any of ``min``, ``max`` and ``equals``, e.g.
    ``{"val_acc": {"min": 0.9}, "n_duplicates": {"equals": 2}}``. A missing metric is a failure.
    """
    failures = []
    for name, rule in checks.items():
        unknown = set(rule) - {"min", "max", "equals"}
        if unknown:
            raise ValueError(f"Check for {name!r} has unknown keys {sorted(unknown)}; use min, max, equals")
        if name not in metrics or metrics[name] is None:
            failures.append(f"{name}: not recorded")
            continue
        value = metrics[name]
        if "min" in rule and not value >= rule["min"]:
            failures.append(f"{name} = {value} is below the minimum {rule['min']}")
        if "max" in rule and not value <= rule["max"]:
            failures.append(f"{name} = {value} is above the maximum {rule['max']}")
        if "equals" in rule and value != rule["equals"]:
            failures.append(f"{name} = {value} should equal {rule['equals']}")
    return failures
