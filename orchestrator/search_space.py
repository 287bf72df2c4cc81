"""A search space over the spec, without Ray: trial specs, and the checks made before a search.

Pure functions, so ``orchestrator validate`` can reject a bad search on a laptop in
milliseconds; :mod:`orchestrator.tuning` runs the search.
"""

from __future__ import annotations

import json
import logging
import random
from typing import Any

from orchestrator.layout import PBT_START_SEGMENT, pbt_segment_storage
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


#: One exploit of a population-based trial: it continued from ``trial``'s checkpoint at
#: ``step``, with ``changes`` (path → [the donor's value, the mutated one]).
Exploit = dict[str, Any]


def pbt_trial_spec(
    base: ExperimentSpec, params: dict[str, Any], trial_id: str, lineage: list[Exploit]
) -> ExperimentSpec:
    """A population-based trial's spec: :func:`trial_spec`, stored in the search's folder.

    Its weights came from other trials' checkpoints, so no plain run with its final values
    would produce them: it must neither be found by ``run`` nor resume from a plain run. Each
    exploit starts a new segment (a run folder of its own, as its values changed); a trial
    restarted without a new exploit (paused, interrupted) finds its segment again and resumes.
    """
    spec = trial_spec(base, params)
    last = lineage[-1] if lineage else None
    segment = f"step-{last['step']}-from-{last['trial']}" if last else PBT_START_SEGMENT
    uri = pbt_segment_storage(base, trial_id, segment).uri
    return spec.model_copy(update={"storage": spec.storage.model_copy(update={"uri": uri})})


def exploit_record(donor: str, step: int, before: dict[str, Any], after: dict[str, Any]) -> Exploit:
    """What one exploit changed: the donor's values that differ from the trial's new ones."""
    changes = {p: [before.get(p), v] for p, v in after.items() if before.get(p) != v}
    return {"trial": donor, "step": step, "changes": changes}


def format_exploit(exploit: Exploit) -> str:
    """``trial-<donor>@step <n> (train.lr 0.0001→8e-05)``, as the results table shows it."""
    changes = ", ".join(
        f"{path} {format_value(old)}→{format_value(new)}"
        for path, (old, new) in exploit["changes"].items()
    )
    return f"trial-{exploit['trial']}@step {exploit['step']} ({changes or 'same values'})"


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
