"""Report: notebook results as JSON next to the rendered HTML reports, one schema for all.

Every notebook calls ``save_results(name, payload)``; the file holds
``{"schema", "name", "summary", "profile", "provenance", "data"}`` where ``data`` is the payload as
given (dict, list of rows or DataFrame records), ``summary`` the one-line verdicts the index shows
and ``provenance`` the block of ``prunekit.reporting.provenance``. ``RESULTS_SCHEMA`` is the JSON
Schema (tests validate every notebook's file against it).
"""
from __future__ import annotations

import os
from pathlib import Path

from prunekit.reporting.provenance import REQUIRED, provenance
from prunekit.utils import atomic_write_json

SCHEMA_ID = "prunekit.results/1"

RESULTS_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "prunekit notebook results",
    "type": "object",
    "required": ["schema", "name", "summary", "profile", "provenance", "data"],
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "name": {"type": "string", "minLength": 1},
        "summary": {"type": "string"},
        "profile": {"type": ["string", "null"]},
        "provenance": {
            "type": "object",
            "required": list(REQUIRED),
            "properties": {
                "created": {"type": "string", "format": "date-time"},
                "git": {"type": ["object", "null"], "required": ["commit", "dirty"],
                        "properties": {"commit": {"type": "string"}, "dirty": {"type": "boolean"}}},
                "code": {"type": "object", "required": ["version", "digest"],
                         "properties": {"version": {"type": "string"}, "digest": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}},
                "versions": {"type": "object", "required": ["prunekit", "torch", "python"],
                             "additionalProperties": {"type": "string"}},
                "models": {"type": "array", "items": {
                    "type": "object", "required": ["id", "fingerprint", "origin", "device", "dtype"],
                    "properties": {k: {"type": "string"} for k in ("id", "fingerprint", "origin", "device", "dtype")}}},
                "device": {"type": ["string", "null"]},
                "dtype": {"type": ["string", "null"]},
                "profile": {"type": ["string", "null"]},
                "argv": {"type": ["array", "null"], "items": {"type": "string"}},
                "parameters": {"type": ["object", "null"]},
            },
        },
        "data": {"type": ["object", "array"]},
    },
    "additionalProperties": False,
}


def report_dir() -> Path:
    d = Path(os.environ.get("PRUNEKIT_REPORT_DIR", "reports"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def summarise(data) -> str:
    """The one-line summary of a payload: its summary / verdicts / claim, or its rows' verdicts."""
    if isinstance(data, dict):
        for k in ("summary", "verdicts", "verdict", "claim"):
            if data.get(k):
                v = data[k]
                return "; ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
        nested = [summarise(v) for v in data.values() if isinstance(v, dict)]
        return "; ".join(s for s in nested if s)
    if isinstance(data, list):
        return "; ".join(str(r["verdict"]) for r in data if isinstance(r, dict) and r.get("verdict"))
    return ""


def results_document(name: str, data, profile: str | None = None, summary: str | None = None,
                     models=None) -> dict:
    if hasattr(data, "to_dict"):
        data = data.to_dict(orient="records")
    prov = provenance(models, profile=profile)
    if profile is None:
        profile = prov["profile"] or (data.get("profile") if isinstance(data, dict) else None)
        prov["profile"] = profile
    return {"schema": SCHEMA_ID, "name": name, "summary": summarise(data) if summary is None else summary,
            "profile": profile, "provenance": prov, "data": data}


def save_results(name: str, obj, profile: str | None = None, summary: str | None = None, models=None) -> None:
    """Write ``obj`` (dict / list / DataFrame) with its summary and provenance to
    ``<report_dir>/<name>.json`` atomically (returns nothing: a notebook's last line stays quiet).
    ``models``: the runtimes / sessions (or their provenance dicts) the results came from."""
    atomic_write_json(report_dir() / f"{name}.json", results_document(name, obj, profile, summary, models))
