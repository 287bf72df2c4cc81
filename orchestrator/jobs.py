"""Submit a spec to a Ray cluster as a Ray job, and follow it from a terminal or a notebook.

``submit`` checks the spec on this machine first (a bad spec never reaches the cluster), then
ships exactly what the job needs through the job's runtime environment:

- a working directory with the spec (overrides applied) and the local files it reads —
  sources, held-out set, a base model given as a folder — with the spec's paths rewritten to
  those copies; ``s3://`` paths and known model names are left for the cluster to read;
- this machine's ``orchestrator`` package as a ``py_module``, so the cluster runs the code
  you have, on top of the dependencies its image has installed;
- non-secret settings only. Credentials never travel in a runtime environment (anyone who
  can see the job in the dashboard can read it): the nodes get them from their instance
  role or ``~/.aws``, as ``storage`` documents.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlparse

from orchestrator.assets import KNOWN_MODELS, SPEC_PREFIX, resolve_model
from orchestrator.credentials import SECRET_NAME, credential_in
from orchestrator.layout import SPEC_FILE, run_location, tune_location
from orchestrator.preflight import validated
from orchestrator.spec import ExperimentSpec, SpecError

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

    from orchestrator.runner import RunResult

log = logging.getLogger("orchestrator")
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
#: Ray's working-directory uploads go through one gRPC message (512 MiB); stay well below.
MAX_SHIPPED_BYTES = 400 * 2**20
#: Settings of this machine that the job should see too (when set here).
FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "AWS_DEFAULT_REGION", "AWS_REGION")
FINAL_STATES = ("SUCCEEDED", "FAILED", "STOPPED")


class JobFailedError(RuntimeError):
    """A submitted job ended without succeeding; the message ends with its last log lines."""


@dataclass
class Submission:
    """What ``submit`` sends: the job's command, runtime environment and (rewritten) spec."""

    spec: ExperimentSpec
    command: str  # "run" or "tune"
    entrypoint: str
    runtime_env: dict[str, Any]
    shipped_bytes: int


def default_address() -> str:
    """``$RAY_ADDRESS`` when it is a dashboard URL, else the local dashboard."""
    address = os.environ.get("RAY_ADDRESS", "")
    return address if address.startswith(("http://", "https://")) else DEFAULT_ADDRESS


def is_loopback(address: str) -> bool:
    host = urlparse(address if "://" in address else f"http://{address}").hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def check_token_transport(address: str, insecure_token: bool = False) -> None:
    """Ray's auth token goes to loopback or over https, unless the caller says otherwise."""
    sends_token = os.environ.get("RAY_AUTH_MODE", "").lower() == "token"
    plain = address.startswith("http://") or "://" not in address
    if sends_token and plain and not is_loopback(address) and not insecure_token:
        raise SpecError(
            [
                f"--address {address}: RAY_AUTH_MODE=token would send the cluster's token in "
                "clear text; use https, an SSH tunnel to 127.0.0.1 (`ray dashboard "
                "cluster.yaml`), or --insecure-token if this network is trusted"
            ],
            "submission",
        )


def check_env(env: dict[str, str]) -> None:
    """Refuse variables that look like secrets: a runtime environment is not a secret store."""
    problems = [
        f"--env {name}: looks like a secret "
        f"({'its name' if SECRET_NAME.search(name) else 'its value'}). A job's runtime_env is "
        "shown to anyone who can open the Ray dashboard; give the cluster its credentials "
        "through its nodes (instance role, ~/.aws, a Kubernetes secret)"
        for name, value in sorted(env.items())
        if SECRET_NAME.search(name) or credential_in(str(value))
    ]
    if problems:
        raise SpecError(problems, "submission")


def stage(
    spec: ExperimentSpec,
    folder: Path,
    command: str,
    env: dict[str, str] | None = None,
    *,
    spec_folder: Path | None = None,
    allow_outside: bool = False,
) -> Submission:
    """Write the job's working directory into ``folder`` and describe the submission.

    Only files under the working directory or ``spec_folder`` (where the spec file lives)
    are shipped, unless ``allow_outside``: a spec shared with you cannot make ``submit``
    carry ``~/.ssh`` or another project's data to a cluster.
    """
    env = dict(env or {})
    check_env(env)
    raw = spec.model_dump(mode="json")
    roots = None if allow_outside else [Path.cwd(), *([spec_folder] if spec_folder else [])]
    shipment = _Shipment(roots)
    for name, source in raw["data"]["sources"].items():
        field = f"data.sources.{name}.path"
        source["path"] = shipment.plan(source["path"], f"inputs/sources/{name}", field)
    for where, path in spec.held_out_files().items():
        *section, key = where.split(".")  # data.eval.corpus, eval.guard.validation.qrels
        node = raw
        for part in section:
            node = node[part]
        node[key] = shipment.plan(path, "inputs/" + "/".join([*section[1:], key]), where)
    base = raw["model"]["base"]
    if base.startswith(SPEC_PREFIX):  # an earlier stage's model: ship the folder itself
        base = resolve_model(base)
    if base not in KNOWN_MODELS and Path(base).expanduser().is_dir():
        raw["model"]["base"] = shipment.plan(base, "inputs/model", "model.base", as_folder=True)
    if "://" not in raw["storage"]["uri"]:
        raw["storage"]["uri"] = str(Path(raw["storage"]["uri"]).expanduser().resolve())
    shipped = sum(local.stat().st_size for local, _ in shipment.files)
    if shipped > MAX_SHIPPED_BYTES:  # before copying anything
        raise SpecError(
            [
                f"the local files this spec reads come to {shipped / 2**20:.0f} MiB, more than "
                f"a job can carry ({MAX_SHIPPED_BYTES / 2**20:.0f} MiB): put the sources in "
                "object storage and name their s3:// URIs"
            ],
            f"spec {spec.name!r}",
        )
    for local, relative in shipment.files:
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(str(local), str(folder / relative))
    staged = ExperimentSpec.model_validate(raw)
    (folder / SPEC_FILE).write_text(staged.to_yaml())
    forwarded = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    env_vars = {"TOKENIZERS_PARALLELISM": "false", **forwarded, **env}
    package = Path(__file__).parent
    return Submission(
        spec=staged,
        command=command,
        entrypoint=f"python -m orchestrator {command} {SPEC_FILE}",
        runtime_env={
            "working_dir": str(folder),
            "py_modules": [str(package)],
            "env_vars": env_vars,
            "excludes": ["__pycache__"],
        },
        shipped_bytes=shipped,
    )


class _Shipment:
    """The local files a job carries: (file here, its path in the job folder).

    ``roots``: the folders a shipped file must resolve into (links followed); None: any.
    """

    def __init__(self, roots: list[Path] | None) -> None:
        self.roots = [root.resolve() for root in roots] if roots is not None else None
        self.files: list[tuple[Path, str]] = []

    def plan(self, path: str, target: str, field: str, as_folder: bool = False) -> str:
        """Add the files a local path (file, folder or glob) ships as under ``target``; the
        spec's new path. Remote paths stay as they are. A symlink inside a shipped folder
        that leads out of it is refused: only what the spec names travels to the cluster.
        """
        if "://" in path:
            return path
        source = Path(path).expanduser()
        if as_folder or source.is_dir():
            root = source.resolve()
            self._check_inside(field, root)
            for local in sorted(source.rglob("*")):
                if not local.resolve().is_relative_to(root):
                    problem = f"{local}: a link out of {source}; only the spec's inputs are shipped"
                    raise SpecError([problem], "submission")
                if local.is_file():
                    self.files.append((local, f"{target}/{local.relative_to(source).as_posix()}"))
            return target
        # A file named like a glob ("pairs[1].jsonl") is that file.
        matches = (
            [source]
            if source.is_file()
            else [Path(m) for m in sorted(glob.glob(path, recursive=True))]
        )
        for index, match in enumerate(matches):
            self._check_inside(field, match.resolve())
            name = match.name if len(matches) == 1 else f"{index:04d}-{match.name}"
            self.files.append((match, f"{target}/{name}"))
        return f"{target}/{matches[0].name}" if len(matches) == 1 else target

    def _check_inside(self, field: str, resolved: Path) -> None:
        if self.roots is None or any(resolved.is_relative_to(root) for root in self.roots):
            return
        folders = " or ".join(str(root) for root in self.roots)
        raise SpecError(
            [
                f"{field}: {resolved} is outside {folders}; submit ships only files from the "
                "working directory and the spec's folder (--allow-outside-inputs to ship it)"
            ],
            "submission",
        )


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def client(address: str) -> JobSubmissionClient:
    """A job client; it sends Ray's auth token when ``RAY_AUTH_MODE=token`` is set here."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


class JobHandle:
    """A submitted run or search: ask for its status, logs and result, or wait for it."""

    def __init__(
        self, job_client: JobSubmissionClient, job_id: str, address: str, submission: Submission
    ) -> None:
        self.client, self.job_id, self.address = job_client, job_id, address.rstrip("/")
        self.submission = submission

    @property
    def spec(self) -> ExperimentSpec:
        return self.submission.spec

    @property
    def dashboard_url(self) -> str:
        return f"{self.address}/#/jobs/{self.job_id}"

    def status(self) -> str:
        """``PENDING``, ``RUNNING``, ``SUCCEEDED``, ``FAILED`` or ``STOPPED``."""
        return str(self.client.get_job_status(self.job_id).value)

    def logs(self) -> str:
        """Everything the job has printed so far."""
        return self.client.get_job_logs(self.job_id)

    def wait(self, timeout: float | None = None, poll_s: float = 2.0) -> str:
        """Block until the job ends; its final status. ``TimeoutError`` after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (status := self.status()) not in FINAL_STATES:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.job_id} still {status} after {timeout:.0f}s")
            time.sleep(poll_s)
        return status

    def follow(self, out: TextIO = sys.stdout, poll_s: float = 1.0) -> str:
        """Copy the job's logs to ``out`` as they grow until it ends; its final status.

        Polls rather than tailing Ray's websocket: that needs an event loop of its own,
        which a notebook's running loop does not allow.
        """
        shown = 0
        while True:
            status = self.status()  # before the logs, so nothing printed last is missed
            logs = self.logs()
            out.write(logs[shown:])
            out.flush()
            shown = len(logs)
            if status in FINAL_STATES:
                return status
            time.sleep(poll_s)

    def stop(self) -> bool:
        return self.client.stop_job(self.job_id)

    def result(self, timeout: float | None = None) -> RunResult:
        """Wait, then the run's summary and model location (a search: its best trial's).

        Read from the run's storage, so it works from any machine that can reach it.
        """
        status = self.wait(timeout)
        if status != "SUCCEEDED":
            tail = "\n".join(self.logs().splitlines()[-20:])
            raise JobFailedError(f"job {self.job_id} {status}; its last log lines:\n{tail}")
        return read_result(self.spec, self.submission.command)

    def __repr__(self) -> str:
        return (
            f"JobHandle({self.spec.name!r} {self.submission.command}, job {self.job_id}, "
            f"{self.status()}, {self.dashboard_url})"
        )

    def _repr_html_(self) -> str:
        return (
            f"<b>{escape(self.spec.name)}</b> ({self.submission.command}) — job "
            f"<code>{escape(self.job_id)}</code>: <b>{escape(self.status())}</b> — "
            f'<a href="{escape(self.dashboard_url)}" target="_blank">Ray dashboard</a>'
        )


def read_result(spec: ExperimentSpec, command: str) -> RunResult:
    """A finished run's ``RunResult`` from its storage; for a search, its best trial's."""
    from orchestrator.runner import RunResult
    from orchestrator.storage import Location
    from orchestrator.summary import read_run_summary, read_search_summary

    run = run_location(spec)
    if command == "tune":
        search = read_search_summary(tune_location(spec))
        if not search.best_run_uri:
            raise JobFailedError(f"search {spec.name!r} finished without a best trial")
        run = Location(search.best_run_uri, *run.connection)
    summary = read_run_summary(run)
    if summary is None:
        raise JobFailedError(f"the job ended without a readable summary in {run.uri}")
    return RunResult.of(run, summary)


def submit(
    spec: ExperimentSpec | str | Path | dict,
    overrides: list[str] | None = None,
    address: str | None = None,
    command: str | None = None,
    env: dict[str, str] | None = None,
    insecure_token: bool = False,
    allow_outside_inputs: bool = False,
) -> JobHandle:
    """Validate ``spec`` here, then run it on the cluster at ``address`` as a Ray job.

    ``command`` is ``run`` or ``tune`` (default: ``tune`` when the spec has a ``tune``
    section). ``env`` adds non-secret environment variables for the job.
    ``insecure_token`` allows sending Ray's auth token over plain http to another host.
    ``allow_outside_inputs`` ships local inputs from outside the working directory and the
    spec file's folder too.
    """
    spec_folder = Path(spec).expanduser().resolve().parent if isinstance(spec, str | Path) else None
    spec = validated(spec, overrides)
    command = command or ("tune" if spec.tune else "run")
    if command not in ("run", "tune"):
        raise ValueError(f"command must be 'run' or 'tune', not {command!r}")
    if command == "tune" and not spec.tune:
        raise SpecError(["tune: a search needs a tune section"], f"spec {spec.name!r}")
    address = address or default_address()
    check_token_transport(address, insecure_token)
    if "://" not in spec.storage.uri and not is_loopback(address):
        log.warning(
            "storage.uri %s is a local folder: the outputs stay on the cluster node that runs "
            "the job; use s3:// to reach them from here",
            spec.storage.uri,
        )
    job_client = client(address)
    with tempfile.TemporaryDirectory(prefix="orchestrator-job-") as folder:
        submission = stage(
            spec,
            Path(folder),
            command,
            env,
            spec_folder=spec_folder,
            allow_outside=allow_outside_inputs,
        )
        job_id = job_client.submit_job(
            entrypoint=submission.entrypoint,
            runtime_env=submission.runtime_env,
            submission_id=_job_id(submission.spec, command),
            metadata={"experiment": spec.name, "run_id": submission.spec.run_id},
        )
    return JobHandle(job_client, job_id, address, submission)


def _job_id(spec: ExperimentSpec, command: str) -> str:
    """Readable and unique: ``quickstart-run-3f2a9c1d-20261123-101500``."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{spec.name}-{command}-{spec.run_id[:8]}-{stamp}"
