"""The ``storage`` section: where runs, checkpoints and compiled corpora live."""

from __future__ import annotations

from pydantic import Field, PositiveInt, field_validator

from orchestrator.spec.base import EndpointUrl, Section


class StorageSpec(Section):
    """Where runs live. Credentials never go here: boto3/pyarrow read the environment,
    ``~/.aws`` or the instance role (``AWS_PROFILE`` picks a named profile)."""

    uri: str = Field(
        default="runs",
        description="A local folder or s3://bucket/prefix; runs live under <uri>/<name>/<run_id>/.",
    )
    endpoint_url: EndpointUrl = Field(
        default=None,
        description="S3-compatible endpoint (MinIO, R2, a test server), e.g. "
        "http://127.0.0.1:9000; None: AWS, or $AWS_ENDPOINT_URL.",
    )
    region: str | None = Field(default=None, description="S3 region; None: the environment's.")
    retry_attempts: PositiveInt = Field(
        default=8, description="Attempts per storage request (AWS 'standard' retry backoff)."
    )
    keep_checkpoints: PositiveInt = Field(
        default=2, description="Checkpoints kept per run, the newest."
    )

    @field_validator("uri")
    @classmethod
    def _supported_uri(cls, uri: str) -> str:
        scheme, sep, rest = uri.partition("://")
        if not sep:
            return uri
        if scheme != "s3":
            raise ValueError(
                f"{scheme}:// is not supported; use a local folder or s3://bucket/prefix"
            )
        bucket = rest.split("/", 1)[0]
        if not bucket or "@" in bucket or ":" in bucket or "?" in rest:
            raise ValueError(
                "expected s3://bucket/prefix without credentials or options; credentials come "
                "from the environment, the endpoint from storage.endpoint_url"
            )
        return uri.rstrip("/")

    @property
    def is_remote(self) -> bool:
        return self.uri.startswith("s3://")
