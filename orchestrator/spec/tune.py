"""The ``tune`` section: a search over the spec itself, keyed by the overrides' dotted paths."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from orchestrator.spec.base import Section, Seed
from orchestrator.step_report import EVAL_PREFIX

if TYPE_CHECKING:
    from orchestrator.spec.experiment import ExperimentSpec

#: Paths a search may vary. Everything else (the model, the data files and columns, the
#: evaluation, storage) is shared by all trials: they reuse one tokenized dataset and one
#: baseline, and their metrics stay comparable.
SEARCHABLE = re.compile(
    r"(loss|lora)(\..+)?|train\.(?!eval_every$).+|scaling\..+|data\.sources\.[^.]+\.weight"
    r"|data\.shuffle(_window)?|data\.bucket_window|model\.attention_dropout"
)

#: Paths population-based training may mutate: a trial restored from another trial's
#: checkpoint takes them at once. The learning rate replaces the schedule's base lr from the
#: checkpoint's step on (:func:`orchestrator.optimizer.restore_schedule`); the loss settings
#: are read when the loss is built. Anything else either shapes the weights or data a
#: checkpoint holds (LoRA, batch, loss kind, sources) or is overwritten by the restored
#: optimizer state (weight decay), so a mutation would silently not apply.
MUTABLE = re.compile(r"train\.lr|loss\.(temperature|margin|matryoshka_weights)")


#: The kinds of search domain, as they are written in a spec.
DOMAIN_KINDS = ("choice", "grid", "uniform", "loguniform", "randint")


class SearchDomain(Section):
    """One search dimension: exactly one of choice, grid, uniform, loguniform or randint."""

    choice: list[Any] | None = Field(default=None, min_length=1, description="Sample one value.")
    grid: list[Any] | None = Field(
        default=None, min_length=1, description="Try every value (each num_samples times)."
    )
    uniform: tuple[float, float] | None = Field(
        default=None, description="[low, high]: sample a number uniformly."
    )
    loguniform: tuple[PositiveFloat, PositiveFloat] | None = Field(
        default=None, description="[low, high], both > 0: sample uniformly on a log scale."
    )
    randint: tuple[int, int] | None = Field(
        default=None, description="[low, high]: sample an integer; both ends included."
    )
    when: dict[str, Any] | None = Field(
        default=None,
        description="Sample only when these earlier parameters take these values (a value or "
        "a list of values), e.g. {loss.kind: [infonce, mnrl]}.",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> SearchDomain:
        kinds = [k for k in DOMAIN_KINDS if getattr(self, k)]
        if len(kinds) != 1:
            raise ValueError("give exactly one of choice, grid, uniform, loguniform, randint")
        bounds = self.uniform or self.loguniform or self.randint
        if bounds and not bounds[0] < bounds[1]:
            raise ValueError(f"{kinds[0]}: expected [low, high] with low < high")
        if self.grid and self.when:
            raise ValueError("a grid cannot be conditional (`when`): use choice")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in DOMAIN_KINDS if getattr(self, k))

    def candidates(self) -> list[Any]:
        """Values to check before anything runs: every listed value, or both ends of a range."""
        return list(getattr(self, self.kind))

    def applies(self, chosen: dict[str, Any]) -> bool:
        """Whether this parameter is sampled, given the values chosen before it."""
        for path, allowed in (self.when or {}).items():
            allowed = allowed if isinstance(allowed, list) else [allowed]
            if chosen.get(path) not in allowed:
                return False
        return True


class TuneSpec(Section):
    """A search over the spec itself: each trial is the run of the spec with sampled overrides."""

    metric: str = Field(
        default="ndcg@10", description="Held-out metric to optimize, e.g. ndcg@10, dim64/ndcg@10."
    )
    mode: Literal["max", "min"] = Field(
        default="max", description="max: a higher metric is better; min: a lower one."
    )
    space: dict[str, SearchDomain] = Field(
        min_length=1, description="Dotted spec paths (as in overrides) → search domain."
    )
    num_samples: PositiveInt = Field(
        default=4, description="Trials to sample; with grids, repeats of the whole grid."
    )
    max_concurrent_trials: PositiveInt | None = Field(
        default=None,
        description="Trials at once; None: as many as the cluster's CPUs/GPUs hold, given "
        "each trial's scaling.",
    )
    search: Literal["random", "optuna"] = Field(
        default="random", description="random (grids enumerated) or Optuna's TPE sampler."
    )
    scheduler: Literal["asha", "fifo", "pbt"] = Field(
        default="asha",
        description="asha: stop trials that trail at an evaluation; fifo: never; pbt: "
        "population-based training (trials that trail continue from a leader's checkpoint "
        "with mutated values).",
    )
    grace_period: PositiveInt | None = Field(
        default=None, description="Steps before ASHA may stop a trial; None: train.eval_every."
    )
    reduction_factor: float = Field(
        default=2.0, gt=1.0, description="ASHA keeps the top 1/reduction_factor at each rung."
    )
    perturbation_interval: PositiveInt | None = Field(
        default=None,
        description="PBT: steps between exploit/explore decisions; a multiple of "
        "train.eval_every and train.checkpoint_every. None: their least common multiple.",
    )
    quantile_fraction: float = Field(
        default=0.25,
        gt=0.0,
        le=0.5,
        description="PBT: the bottom fraction of trials continues from the top fraction.",
    )
    resample_probability: float = Field(
        default=0.25,
        ge=0.0,
        le=1.0,
        description="PBT: chance that a mutated value is drawn anew from its domain instead of "
        "scaled by 0.8/1.2 (a range) or moved to a neighbour (a list).",
    )
    time_budget_s: PositiveFloat | None = Field(
        default=None, description="Stop starting and running trials after this many seconds."
    )
    seed: Seed | None = Field(default=None, description="Sampler seed; None: train.seed.")

    def sampler_seed(self, train_seed: int) -> int:
        return self.seed if self.seed is not None else train_seed

    def trial_params(self, config: dict[str, Any]) -> dict[str, Any]:
        """The sampled values that apply to a trial: one whose ``when`` fails is dropped."""
        chosen: dict[str, Any] = {}
        for path, domain in self.space.items():
            if path in config and domain.applies(chosen):
                chosen[path] = config[path]
        return chosen

    def pbt_interval(self, eval_every: int, checkpoint_every: int) -> int:
        """Steps between PBT decisions: each falls on a step that both evaluates (PBT
        compares the metric) and checkpoints (a trial that trails needs a leader's state)."""
        return self.perturbation_interval or math.lcm(eval_every, checkpoint_every)

    @property
    def metric_key(self) -> str:
        """The name the metric carries in Ray Train/Tune reports."""
        return f"{EVAL_PREFIX}{self.metric}"

    def problems(self, spec: ExperimentSpec) -> list[str]:
        problems = [spec.metric_problem("tune.metric", self.metric)]
        if not spec.train.eval_every:
            problems.append(
                "train.eval_every: a search reads its metric from evaluations during training "
                "(ASHA compares trials there): set it, e.g. to a quarter of the steps"
            )
        seen: list[str] = []
        for path, domain in self.space.items():
            where = f"tune.space.{path}"
            if not SEARCHABLE.fullmatch(path):
                problems.append(
                    f"{where}: not searchable; trials share the model, data files, evaluation "
                    "and storage. Search loss.*, lora.*, train.* (not eval_every), scaling.*, "
                    "data.sources.<name>.weight, data.shuffle, data.shuffle_window, "
                    "data.bucket_window, model.attention_dropout"
                )
            name = path.split(".")[2] if path.startswith("data.sources.") else None
            if name and name not in spec.data.sources:
                problems.append(f"{where}: no source {name!r} in data.sources")
            for condition in domain.when or {}:
                if condition not in seen:
                    problems.append(f"{where}.when: {condition!r} must be searched before it")
            if self.search == "optuna" and domain.grid:
                problems.append(f"{where}: optuna samples; use choice instead of grid")
            scalars = (str, int, float, bool, type(None))
            if self.search == "optuna" and any(
                not isinstance(v, scalars) for v in domain.choice or []
            ):
                problems.append(f"{where}: optuna chooses among single values, not lists/maps")
            seen.append(path)
        if self.scheduler == "pbt":
            problems.extend(self._pbt_problems(spec))
        return problems

    def _pbt_problems(self, spec: ExperimentSpec) -> list[str]:
        """What population-based training cannot do: mutations that would not take effect
        mid-training, a sampler that would fight PBT over the values, decisions between
        evaluations or checkpoints."""
        problems = []
        if self.search != "random":
            problems.append(
                "tune.search: pbt chooses the values itself after the first sample; use random"
            )
        for path, domain in self.space.items():
            where = f"tune.space.{path}"
            if not MUTABLE.fullmatch(path):
                problems.append(
                    f"{where}: pbt changes values mid-training, which only train.lr, "
                    "loss.temperature, loss.margin and loss.matryoshka_weights can; search "
                    "the rest with asha or fifo"
                )
            if domain.when:
                problems.append(f"{where}.when: pbt mutates every parameter; drop the condition")
        train = spec.train
        if train.eval_every:
            interval = self.pbt_interval(train.eval_every, train.checkpoint_every)
            if train.max_steps is not None and interval >= train.max_steps:
                problems.append(
                    f"tune.perturbation_interval: {interval} steps; training stops at "
                    f"train.max_steps={train.max_steps} before pbt ever decides: set a "
                    "smaller interval (or train.eval_every, train.checkpoint_every)"
                )
            if interval % train.eval_every or interval % train.checkpoint_every:
                problems.append(
                    f"tune.perturbation_interval: {interval} must be a multiple of "
                    f"train.eval_every ({train.eval_every}) and train.checkpoint_every "
                    f"({train.checkpoint_every}): pbt decides at an evaluation and restores "
                    "from a checkpoint of that step"
                )
        return problems
