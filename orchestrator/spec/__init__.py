"""The experiment spec: one validated document that drives data, training, evaluation and export.

This package is deliberately free of torch and Ray imports so a spec can be loaded and checked
on a laptop in milliseconds, before anything reaches a cluster. Checks that need the file
system (does the corpus exist? how wide is the model?) live in :mod:`orchestrator.preflight`.

One module a section, in the order a spec is written:

- :mod:`~orchestrator.spec.base`: what every section shares (strict parsing, path and seed types)
- :mod:`~orchestrator.spec.model`: ``model``, ``lora``, ``merge``
- :mod:`~orchestrator.spec.columns`: canonical columns and the four row formats
- :mod:`~orchestrator.spec.data`: ``data`` (sources and the held-out sets it names)
- :mod:`~orchestrator.spec.loss`: ``loss``, the union of objectives
- :mod:`~orchestrator.spec.train`: ``train``, ``scaling``
- :mod:`~orchestrator.spec.evaluation`: held-out sets, ``eval`` and its guard, metric names
- :mod:`~orchestrator.spec.storage`: ``storage``
- :mod:`~orchestrator.spec.tune`: ``tune``, the search over the spec
- :mod:`~orchestrator.spec.experiment`: :class:`ExperimentSpec`, the checks across sections, hash
- :mod:`~orchestrator.spec.load`: :func:`load_spec`, overrides, :class:`SpecError`
- :mod:`~orchestrator.spec.yaml_reader`: the defensive YAML reader
- :mod:`~orchestrator.spec.reference`: the README's table of fields, from their descriptions
"""

from __future__ import annotations

from orchestrator.spec.base import EndpointUrl, PathText, Seed
from orchestrator.spec.columns import (
    ANCHOR,
    LABEL,
    LABELED_PAIRS,
    PAIRS,
    POSITIVE,
    SCORE,
    SCORED_PAIRS,
    TRIPLETS,
    ColumnMap,
)
from orchestrator.spec.data import CsvSource, DataSpec, JsonlSource, ParquetSource, Source
from orchestrator.spec.evaluation import (
    GUARD_METRIC,
    METRIC_NAME,
    SET_METRIC_NAME,
    EvalSet,
    EvalSpec,
    GuardSpec,
    LabeledPairsEvalSet,
    Precision,
    RetrievalEvalSet,
    RetrievalEvalSpec,
    ScoredPairsEvalSet,
    TripletEvalSet,
    format_by_suffix,
)
from orchestrator.spec.experiment import ExperimentSpec, TestingSpec
from orchestrator.spec.export import ExportFormat, ExportSpec
from orchestrator.spec.load import SpecError, apply_overrides, load_spec, parse_spec, set_path
from orchestrator.spec.loss import (
    LOSS_CLASSES,
    CachedInfoNCELoss,
    ContrastiveLossSpec,
    CoSENTLossSpec,
    CosineSimilarityLossSpec,
    GuideSpec,
    InfoNCELoss,
    Loss,
    TripletLossSpec,
)
from orchestrator.spec.model import LoraSpec, MergeSpec, ModelSpec
from orchestrator.spec.storage import StorageSpec
from orchestrator.spec.tracking import MlflowSpec, TrackingSpec
from orchestrator.spec.train import ScalingSpec, TrainSpec
from orchestrator.spec.tune import DOMAIN_KINDS, SEARCHABLE, SearchDomain, TuneSpec

__all__ = [
    "ANCHOR",
    "DOMAIN_KINDS",
    "GUARD_METRIC",
    "LABEL",
    "LABELED_PAIRS",
    "LOSS_CLASSES",
    "METRIC_NAME",
    "PAIRS",
    "POSITIVE",
    "SCORE",
    "SCORED_PAIRS",
    "SEARCHABLE",
    "SET_METRIC_NAME",
    "TRIPLETS",
    "CachedInfoNCELoss",
    "CoSENTLossSpec",
    "ColumnMap",
    "ContrastiveLossSpec",
    "CosineSimilarityLossSpec",
    "CsvSource",
    "DataSpec",
    "EndpointUrl",
    "EvalSet",
    "EvalSpec",
    "ExperimentSpec",
    "ExportFormat",
    "ExportSpec",
    "GuardSpec",
    "GuideSpec",
    "InfoNCELoss",
    "JsonlSource",
    "LabeledPairsEvalSet",
    "LoraSpec",
    "Loss",
    "MergeSpec",
    "MlflowSpec",
    "ModelSpec",
    "ParquetSource",
    "PathText",
    "Precision",
    "RetrievalEvalSet",
    "RetrievalEvalSpec",
    "ScalingSpec",
    "ScoredPairsEvalSet",
    "SearchDomain",
    "Seed",
    "Source",
    "SpecError",
    "StorageSpec",
    "TestingSpec",
    "TrackingSpec",
    "TrainSpec",
    "TripletEvalSet",
    "TripletLossSpec",
    "TuneSpec",
    "apply_overrides",
    "format_by_suffix",
    "load_spec",
    "parse_spec",
    "set_path",
]
