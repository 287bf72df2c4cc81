"""The whole spec: its sections, the checks that span them, its hash and its YAML."""

from __future__ import annotations

import hashlib
import json

import yaml
from pydantic import Field, PositiveInt, model_validator

from orchestrator.published import without_home
from orchestrator.spec.base import CROSS_FIELD, Section
from orchestrator.spec.data import DataSpec
from orchestrator.spec.evaluation import (
    METRIC_NAME,
    SET_METRIC_NAME,
    VARIANT_NAME,
    EvalSpec,
    RetrievalEvalSet,
)
from orchestrator.spec.export import ExportSpec
from orchestrator.spec.loss import InfoNCELoss, Loss
from orchestrator.spec.model import LoraSpec, MergeSpec, ModelSpec
from orchestrator.spec.storage import StorageSpec
from orchestrator.spec.tracking import TrackingSpec
from orchestrator.spec.train import ScalingSpec, TrainSpec
from orchestrator.spec.tune import TuneSpec


class TestingSpec(Section):
    """Chaos testing: rehearse recovery on a real cluster before a spot node does it for you."""

    kill_worker_at_step: PositiveInt = Field(
        description="SIGKILL one training worker once, when it reaches this step."
    )
    kill_rank: int = Field(default=0, ge=0, description="The rank of the worker killed.")


class ExperimentSpec(Section):
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        max_length=100,
        description="Experiment name: the folder of its runs under storage.uri.",
    )
    description: str = Field(default="", description="Free text, for people.")
    model: ModelSpec = Field(description="Which encoder to start from and how texts reach it.")
    data: DataSpec = Field(description="The training sources and the held-out sets.")
    loss: Loss = Field(
        description="The training objective, by kind; each trains on some row formats "
        "(pairs, triplets, scored pairs, labeled pairs)."
    )
    lora: LoraSpec | None = Field(
        default=None, description="LoRA adapters (peft); absent: full fine-tuning."
    )
    merge: MergeSpec | None = Field(
        default=None,
        description="Weight-space interpolation of base and fine-tuned (WiSE-FT) before "
        "export; absent: the fine-tuned model as is.",
    )
    train: TrainSpec = Field(
        default_factory=TrainSpec, description="Optimizer, budget, precision and cadence."
    )
    scaling: ScalingSpec = Field(
        default_factory=ScalingSpec, description="Training workers and data tasks on Ray."
    )
    eval: EvalSpec = Field(
        default_factory=EvalSpec,
        description="How held-out sets are evaluated, the metric of the verdict, the guard.",
    )
    export: ExportSpec = Field(
        default_factory=ExportSpec,
        description="Runtime formats (ONNX, OpenVINO) exported beside the model and evaluated.",
    )
    storage: StorageSpec = Field(
        default_factory=StorageSpec,
        description="Where runs live; credentials never go here (they come from the "
        "environment, ~/.aws or the instance role).",
    )
    tune: TuneSpec | None = Field(
        default=None,
        description="A search over the spec itself (`orchestrator tune`): each trial is a run "
        "of the spec with sampled overrides.",
    )
    tracking: TrackingSpec = Field(
        default_factory=TrackingSpec,
        description="Experiment trackers the run also reports to (MLflow).",
    )
    testing: TestingSpec | None = Field(
        default=None, description="Chaos testing: kill a worker to rehearse recovery."
    )

    @model_validator(mode="after")
    def _cross_field(self) -> ExperimentSpec:
        problems = []
        batch = self.train.batch_size
        for name, source in self.data.sources.items():
            if problem := self.loss.column_problem(source.columns):
                problems.append(f"data.sources.{name}.columns: {problem}")
            if source.max_rows is not None and source.max_rows < batch:
                problems.append(
                    f"data.sources.{name}.max_rows: {source.max_rows} rows cannot fill one "
                    f"global batch of {batch} (train.batch_size); each step draws from one source"
                )
        contrastive = isinstance(self.loss, InfoNCELoss)
        gathered = contrastive and self.loss.gather_across_workers
        pool = batch if gathered else batch // max(self.scaling.num_workers, 1)
        no_negatives = all(not s.columns.negatives for s in self.data.sources.values())
        if contrastive and pool < 2 and no_negatives:
            problems.append(
                f"train.batch_size: InfoNCE with {pool} pair per softmax and no hard negatives "
                "has nothing to contrast; use a larger batch (or gather across workers)"
            )
        if self.train.batch_size % self.scaling.num_workers:
            problems.append(
                f"train.batch_size: {self.train.batch_size} is the global batch and must divide "
                f"evenly over scaling.num_workers={self.scaling.num_workers}"
            )
        problems.append(self.metric_problem("eval.main_metric", self.eval.main_metric))
        if self.tune:
            problems.extend(self.tune.problems(self))
        chaos = self.testing
        if chaos and chaos.kill_worker_at_step <= self.train.checkpoint_every:
            problems.append(
                "testing.kill_worker_at_step: must come after the first checkpoint "
                f"(train.checkpoint_every={self.train.checkpoint_every}), or nothing can resume"
            )
        last = self.train.max_steps
        if chaos and last is not None and chaos.kill_worker_at_step > last:
            problems.append(
                f"testing.kill_worker_at_step: step {chaos.kill_worker_at_step} comes after the "
                f"last step (train.max_steps={last}): nothing would be killed"
            )
        if chaos and chaos.kill_rank >= self.scaling.num_workers:
            problems.append(f"testing.kill_rank: no rank {chaos.kill_rank} among the workers")
        if chaos and self.scaling.max_failures == 0:
            problems.append("testing: a killed worker needs scaling.max_failures >= 1 to recover")
        guard = self.eval.guard
        if guard and (found := METRIC_NAME.fullmatch(guard.metric)):
            problems.append(
                self._cutoff_problem(
                    "eval.guard.metric", guard.metric, found["kind"], int(found["k"])
                )
            )
        if guard and (guard.name in self.data.eval_sets or VARIANT_NAME.fullmatch(guard.name)):
            problems.append(
                f"eval.guard.name: {guard.name!r} is taken (data.eval_sets, dim<N>, int8, binary): "
                "metric names would collide"
            )
        if self.merge and not (guard and self.data.eval):
            problems.append(
                "merge: choosing the weight needs data.eval (in-domain) and eval.guard "
                "(general domain); add data.validation and eval.guard.validation to choose on "
                "validation splits"
            )
        if self.train.precision == "fp16" and not self.scaling.use_gpu:
            problems.append("train.precision: fp16 needs GPUs (scaling.gpus_per_worker > 0)")
        problems = [p for p in problems if p]
        if problems:  # one line each; _format_error splits them back into separate problems
            raise ValueError(CROSS_FIELD + "\n".join(problems))
        return self

    def _cutoff_problem(self, field: str, name: str, kind: str, k: int) -> str | None:
        """The retrieval evaluator reports map@100 and the others at eval.k_values (and 10)."""
        if kind == "map":
            return None if k == 100 else f"{field}: {name!r}: MAP is reported at 100 only"
        cutoffs = sorted({*self.eval.k_values, 10})
        if k not in cutoffs:
            return f"{field}: {name!r}: {kind} is reported at {cutoffs} (eval.k_values)"
        return None

    def metric_problem(self, field: str, name: str) -> str | None:
        """Why ``name`` is not a metric this spec's evaluation produces, or None."""
        if match := METRIC_NAME.fullmatch(name):
            if self.data.eval is None:
                sets = ", ".join(f"'{n}/{s.metrics[0]}'" for n, s in self.data.eval_sets.items())
                return f"{field}: {name!r} needs data.eval (a retrieval set); or name {sets}"
            if match["dim"] and int(match["dim"]) not in self.eval.matryoshka_dims:
                return f"{field}: {name!r} needs {match['dim']} in eval.matryoshka_dims"
            if match["precision"] and match["precision"] not in self.eval.quantization:
                return f"{field}: {name!r} needs {match['precision']} in eval.quantization"
            return self._cutoff_problem(field, name, match["kind"], int(match["k"]))
        if match := SET_METRIC_NAME.fullmatch(name):
            held_out = self.data.eval_sets.get(match[1])
            if held_out is None:
                return f"{field}: {name!r}: no set {match[1]!r} in data.eval_sets"
            if isinstance(held_out, RetrievalEvalSet):
                plain = (found := METRIC_NAME.fullmatch(match[2])) and not found["dim"]
                if plain and not found["precision"]:
                    return self._cutoff_problem(field, name, found["kind"], int(found["k"]))
                return f"{field}: a retrieval set reports metrics like '{match[1]}/ndcg@10'"
            if match[2] not in held_out.metrics:
                return f"{field}: a {held_out.kind} set reports {', '.join(held_out.metrics)}"
            return None
        return (
            f"{field}: {name!r} is not like 'ndcg@10', 'dim64/ndcg@10' (retrieval) or "
            "'<set>/accuracy' (data.eval_sets)"
        )

    @property
    def per_worker_batch_size(self) -> int:
        return self.train.batch_size // self.scaling.num_workers

    def held_out_files(self) -> dict[str, str]:
        """Dotted field path → local path of every held-out file, the guard's included."""
        files = self.data.eval_files()
        if self.eval.guard:
            files.update({f"eval.guard.{k}": v for k, v in self.eval.guard.local_files().items()})
        return files

    def hash(self, include_tune: bool = False) -> str:
        """Stable content hash: equal specs (after defaults) give equal run ids.

        The ``tune`` section is left out by default: it does not change what a run trains, so
        ``run`` of a spec and the search trial with the same values share one run folder.
        ``tracking`` is always left out: where results are also recorded changes nothing.
        A path spelled from the home folder hashes as its ``~/`` form: the spec a run
        publishes (see :mod:`orchestrator.published`) names that same run.
        """
        raw = self.model_dump(
            mode="json", exclude={"tracking", *([] if include_tune else ["tune"])}
        )
        canonical = without_home(json.dumps(raw, sort_keys=True))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def run_id(self) -> str:
        return self.hash()[:12]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def published_yaml(self) -> str:
        """The spec as a run publishes it beside its outputs: the home folder written as ``~``."""
        return without_home(self.to_yaml())
