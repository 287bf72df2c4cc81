"""Ray-based experiment orchestrator for fine-tuning text-embedding models.

from orchestrator import run, submit
result = run("experiments/quickstart.yaml")  # here, on a local Ray
handle = submit("experiments/quickstart.yaml", address="http://127.0.0.1:8265")  # a cluster
result = handle.result()
"""

from orchestrator.spec import ExperimentSpec, SpecError, load_spec

__all__ = [
    "ExperimentSpec",
    "SpecError",
    "compile_data",
    "evaluate",
    "list_runs",
    "load_spec",
    "prepare",
    "pull",
    "run",
    "submit",
    "tune",
    "validate",
]


def validate(spec, overrides: list[str] | None = None, check_files: bool = True) -> ExperimentSpec:
    """Load and check a spec (and, by default, the files and model it names)."""
    from orchestrator.preflight import validated

    return validated(spec, overrides, check_files)


def run(
    spec, overrides: list[str] | None = None, resume_from: str | None = None, fresh: bool = False
):
    """Run one experiment on Ray (a local instance when none is running); see ``runner.run``."""
    from orchestrator.runner import run as _run

    return _run(spec, overrides, resume_from, fresh)


def compile_data(spec, overrides: list[str] | None = None):
    """Compile the spec's sources to token-id fragments ahead of training (reused by runs,
    resumes and searches with the same files and tokenizing); a ``CompiledData``."""
    from orchestrator.assets import resolve_model
    from orchestrator.preflight import preflight
    from orchestrator.ray_init import ensure_ray
    from orchestrator.runner import prepare_data

    spec = load_spec(spec, overrides)
    preflight(spec)
    model_path = resolve_model(spec.model.base)
    ensure_ray()
    return prepare_data(spec, model_path)


def tune(spec, overrides: list[str] | None = None, fresh: bool = False):
    """Search the spec's ``tune.space`` with Ray Tune; see ``tuning.tune``."""
    from orchestrator.tuning import tune as _tune

    return _tune(spec, overrides, fresh)


def submit(
    spec,
    overrides: list[str] | None = None,
    address: str | None = None,
    command: str | None = None,
    env: dict[str, str] | None = None,
    insecure_token: bool = False,
):
    """Check ``spec`` here, run it on the Ray cluster at ``address``; a ``JobHandle``.

    ``handle.status()``, ``.logs()``, ``.wait()``, ``.result()`` (summary and model location);
    see ``jobs.submit``.
    """
    from orchestrator.jobs import submit as _submit

    return _submit(spec, overrides, address, command, env, insecure_token)


def evaluate(model_path: str, spec) -> dict[str, float]:
    """Evaluate any SentenceTransformer folder on a spec's held-out set."""
    from orchestrator.evaluation import evaluate as _evaluate
    from orchestrator.modeling import load_encoder

    spec = load_spec(spec)
    return _evaluate(load_encoder(model_path, spec.model), spec)


def prepare(datasets: list[str] | None = None, models: list[str] | None = None) -> list[dict]:
    """Fetch the offline corpora and models (cached); see ``orchestrator.data.prepare``."""
    from orchestrator.assets import fetch_model
    from orchestrator.data.prepare import prepare as _prepare

    reports = _prepare(datasets)
    for name in models or ["all-MiniLM-L6-v2"]:
        reports.append({"model": name, "path": str(fetch_model(name))})
    return reports


def pull(uri: str, destination: str, endpoint_url: str | None = None, region: str | None = None):
    """Fetch a published folder (e.g. ``s3://bucket/runs/x/<id>/model``), verifying its manifest.

    Raises ``IncompleteUploadError`` for a folder without a manifest or with a bad checksum.
    """
    from pathlib import Path

    from orchestrator.storage import Location
    from orchestrator.storage import pull as _pull

    return _pull(Location(uri, endpoint_url, region), Path(destination))


def list_runs(root: str, endpoint_url: str | None = None, region: str | None = None) -> list[dict]:
    """Runs under a storage root: name, run id, status, spec hash, steps, metric before/after."""
    from orchestrator.catalog import list_runs as _list_runs
    from orchestrator.storage import Location

    return _list_runs(Location(root, endpoint_url, region))
