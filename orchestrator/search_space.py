"""A search space over the spec, without Ray: trial specs, and the checks made before a search.

Pure functions, so ``orchestrator validate`` can reject a bad search on a laptop in
milliseconds; :mod:`orchestrator.tuning` runs the search.
"""

from __future__ import annotations

import json
import logging
import random
from typing import Any

from orchestrator.spec import (
    LOSS_CLASSES,
    ExperimentSpec,
    SearchDomain,
    SpecError,
    parse_spec,
    set_path,
)

log = logging.getLogger("orchestrator")

#: Above this many value combinations, the up-front check validates a random sample of them.
CHECK_LIMIT = 2048


def trial_spec(base: ExperimentSpec, params: dict[str, Any]) -> ExperimentSpec:
    """The base spec with a trial's values, validated; raises :class:`SpecError`.

    A trial that switches ``loss.kind`` keeps only the loss settings the new kind has (the
    base's ``temperature`` means nothing to a triplet loss), then takes its own values.
    """
    raw = base.model_dump(mode="json", exclude={"tune"})
    kind = params.get("loss.kind")
    if kind in LOSS_CLASSES and kind != raw["loss"]["kind"]:
        fields = LOSS_CLASSES[kind].model_fields
        raw["loss"] = {k: v for k, v in raw["loss"].items() if k in fields} | {"kind": kind}
    origin = f"trial {format_params(params)}"
    for path, value in params.items():
        try:
            set_path(raw, path, value)
        except KeyError as exc:
            raise SpecError([f"tune.space.{path}: {exc.args[0]}"], origin) from None
    return parse_spec(raw, origin)


def format_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={format_value(v)}" for k, v in params.items()) or "(base spec)"


def format_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value)


def _combinations(space: dict[str, SearchDomain], seed: int) -> list[dict[str, Any]]:
    """Every combination of candidate values (range ends), conditions applied; capped."""
    rng = random.Random(seed)
    combos: list[dict[str, Any]] = [{}]
    for path, domain in space.items():
        grown = []
        for combo in combos:
            if domain.applies(combo):
                grown.extend({**combo, path: value} for value in domain.candidates())
            else:
                grown.append(combo)
        combos = grown if len(grown) <= CHECK_LIMIT else rng.sample(grown, CHECK_LIMIT)
    return combos


def check_space(base: ExperimentSpec) -> list[ExperimentSpec]:
    """Validate the search before anything runs; return the valid candidate trial specs.

    A value that is invalid in every combination (a typo'd loss kind, a τ above 1) or a
    parameter whose condition never holds is an error here. A combination that is invalid
    only together (3 workers for a batch of 32) is allowed: that trial is skipped with its
    reason when sampled.
    """
    space = base.tune.space
    ok, seen, reasons = set(), set(), {}
    valid = []
    combos = _combinations(space, base.tune.sampler_seed(base.train.seed))
    for params in combos:
        items = {(path, json.dumps(value, sort_keys=True)) for path, value in params.items()}
        seen |= items
        try:
            valid.append(trial_spec(base, params))
            ok |= items
        except SpecError as exc:
            for item in items:
                reasons.setdefault(item, exc.problems[0])
    problems = []
    for path, domain in space.items():
        if not any(p == path for p, _ in seen):
            problems.append(f"tune.space.{path}: its `when` never holds for the values searched")
        for value in domain.candidates():
            item = (path, json.dumps(value, sort_keys=True))
            if item in seen and item not in ok:
                problems.append(
                    f"tune.space.{path}: {format_value(value)} is invalid in every combination: "
                    f"{reasons[item]}"
                )
    if problems or not valid:
        raise SpecError(problems or ["tune.space: no combination is valid"], f"spec {base.name!r}")
    invalid = len(combos) - len(valid)
    if invalid > 0:
        log.warning("tune: %d combination(s) are invalid and will be skipped if sampled", invalid)
    return valid
