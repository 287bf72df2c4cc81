"""The ``tracking`` section: where runs are also recorded, for teams that track in MLflow."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from orchestrator.spec.base import Section


class MlflowSpec(Section):
    """An MLflow tracking server or store. Credentials never go here: MLflow reads
    ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``/``TOKEN`` from the environment."""

    uri: str | None = Field(
        default=None,
        description="MLflow tracking URI: http(s)://host[:port] of a tracking server, or a "
        "file: / sqlite: store; None: $MLFLOW_TRACKING_URI.",
    )
    experiment: str | None = Field(
        default=None,
        description="The MLflow experiment runs are logged under; None: the spec's name.",
    )

    @field_validator("uri")
    @classmethod
    def _no_credentials(cls, uri: str | None) -> str | None:
        if uri is None:
            return None
        if not re.match(r"(https?|file|sqlite|postgresql|mysql)://|/|\.", uri):
            raise ValueError(
                "expected http(s)://host[:port], a file: or database URI, or a local folder"
            )
        if re.match(r"https?://[^/]*@", uri):
            raise ValueError(
                "credentials never go in a spec: set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment"
            )
        return uri.rstrip("/")


class TrackingSpec(Section):
    """Experiment trackers every run also reports to. Not part of the run id: where results
    are recorded does not change what a run trains."""

    mlflow: MlflowSpec | None = Field(
        default=None,
        description="Log each run's resolved spec (params), every training report (metrics by "
        "step), both evaluations and the verdict, and report.html, the model card and "
        "summary.json (artifacts); a search logs one child run per trial. None: only when "
        "$MLFLOW_TRACKING_URI is set.",
    )
