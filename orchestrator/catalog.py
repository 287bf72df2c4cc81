"""What runs a storage root holds: ``orchestrator runs list ROOT`` / ``runs show RUN``.

A run is ``<root>/<name>/<run id>/``. Its status comes from what is there, trusting only
manifests: ``complete`` (model published with a manifest), ``incomplete upload`` (model files
but no manifest), ``checkpointed`` (training checkpoints only: running, failed or interrupted).
A search (``<root>/<name>/tune-<id>/``) is listed as ``search``, with its best trial's verdict.
The compiled sources beside the runs (``<root>/_compiled/``) are not runs.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from pydantic import ValidationError

from orchestrator.layout import (
    CHECKPOINT_PREFIX,
    COMPILED_DIR,
    MODEL_DIR,
    RESULTS_MD,
    SUMMARY_FILE,
)
from orchestrator.storage import MANIFEST, Location, list_keys, read_text
from orchestrator.summary import (
    RunSummary,
    SearchSummary,
    parse_run_summary,
    parse_search_summary,
    summary_dict,
)

COMPLETE, INCOMPLETE, CHECKPOINTED, EMPTY = "complete", "incomplete upload", "checkpointed", "empty"
SEARCH = "search"


def status_of(keys: set[str]) -> str:
    if RESULTS_MD in keys:
        return SEARCH
    if f"{MODEL_DIR}/{MANIFEST}" in keys:
        return COMPLETE
    if any(k.startswith(f"{MODEL_DIR}/") for k in keys):
        return INCOMPLETE
    if any(k.startswith(CHECKPOINT_PREFIX) for k in keys):
        return CHECKPOINTED
    return EMPTY


def describe(run: Location, keys: set[str]) -> dict[str, Any]:
    name, run_id = run.uri.rstrip("/").split("/")[-2:]
    status = status_of(keys)
    row: dict[str, Any] = {"name": name, "run_id": run_id, "uri": run.uri, "status": status}
    summary = _summary(run, keys, search=status == SEARCH)
    if isinstance(summary, str):
        row["status"] += f" ({summary})"
        return row
    if isinstance(summary, RunSummary):
        row.update(spec_hash=summary.spec_hash, steps=summary.steps)
    if summary is not None and (verdict := summary.verdict) is not None:
        row.update(
            metric=verdict.metric,
            baseline=verdict.baseline,
            finetuned=verdict.finetuned,
            improved=verdict.improved,
        )
    return row


def _summary(
    run: Location, keys: set[str], search: bool
) -> RunSummary | SearchSummary | str | None:
    """A run's or a search's summary.json; a short reason instead when it cannot be read; None
    without one.

    Writes are atomic, but a copy made by other tools, a full disk or a hand edit can still
    leave a torn file: one such run must not hide the others from the listing.
    """
    if SUMMARY_FILE not in keys:
        return None
    try:
        text = read_text(run.join(SUMMARY_FILE))
        return parse_search_summary(text) if search else parse_run_summary(text)
    except FileNotFoundError:
        return f"{SUMMARY_FILE} vanished"
    except (ValidationError, UnicodeDecodeError):
        return f"{SUMMARY_FILE} unreadable"


def list_runs(root: Location) -> list[dict[str, Any]]:
    by_run: dict[tuple[str, str], set[str]] = defaultdict(set)
    for key in list_keys(root):
        parts = key.split("/", 2)
        if len(parts) == 3 and parts[0] != COMPILED_DIR:
            by_run[(parts[0], parts[1])].add(parts[2])
    return [
        describe(root.join(name, run_id), keys) for (name, run_id), keys in sorted(by_run.items())
    ]


def show_run(run: Location) -> dict[str, Any]:
    keys = set(list_keys(run))
    row = describe(run, keys)
    if isinstance(summary := _summary(run, keys, search=row["status"] == SEARCH), RunSummary):
        row["summary"] = summary_dict(summary)
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| name | run id | spec hash | status | steps | metric | base | fine-tuned |",
        "|---|---|---|---|---:|---|---:|---:|",
    ]
    for r in rows:
        base = f"{r['baseline']:.4f}" if r.get("baseline") is not None else ""
        tuned = f"{r['finetuned']:.4f}" if r.get("finetuned") is not None else ""
        lines.append(
            f"| {r['name']} | {r['run_id']} | {(r.get('spec_hash') or '')[:16]} | {r['status']} | "
            f"{r.get('steps') or ''} | "
            f"{r.get('metric') or ''} | {base} | {tuned} |"
        )
    return "\n".join(lines)
