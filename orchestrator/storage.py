"""Where runs live: a local folder or an S3-compatible bucket, behind one small interface.

Ray Train writes checkpoints through a pyarrow filesystem (:func:`arrow_storage`); finished
artifacts are uploaded with boto3 (:func:`publish`). A published folder is trusted only
through its ``manifest.json`` (file list, sizes, sha256, spec hash, metrics), written **last**
after every file was uploaded and verified: a folder without one is an incomplete upload.

Credentials never pass through this module or the spec: boto3 and pyarrow find them in the
environment, ``~/.aws`` (``AWS_PROFILE``) or the instance role, on every node by themselves.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from orchestrator.errors import IncompleteUploadError

MANIFEST = "manifest.json"
SHA_KEY = "sha256"  # object metadata key holding each upload's checksum
CHUNK = 8 << 20


@dataclass(frozen=True)
class Location:
    """A local path or ``s3://bucket/key`` plus how to reach the bucket (no credentials)."""

    uri: str
    endpoint_url: str | None = None
    region: str | None = None
    attempts: int = 8  # per request, with AWS's "standard" backoff

    @classmethod
    def of(cls, storage: Any) -> Location:
        """From a spec's ``storage`` section."""
        uri = storage.uri
        if not uri.startswith("s3://"):
            uri = str(Path(uri).expanduser().resolve())
        return cls(uri, storage.endpoint_url, storage.region, storage.retry_attempts)

    @property
    def connection(self) -> tuple[str | None, str | None, int]:
        """How to reach the store (endpoint, region, attempts), for a Location elsewhere on it."""
        return self.endpoint_url, self.region, self.attempts

    @property
    def is_remote(self) -> bool:
        return self.uri.startswith("s3://")

    @property
    def bucket(self) -> str:
        return urlparse(self.uri).netloc

    @property
    def key(self) -> str:
        return urlparse(self.uri).path.lstrip("/")

    def join(self, *parts: str) -> Location:
        uri = "/".join([self.uri.rstrip("/"), *parts])
        return Location(uri, *self.connection)

    @property
    def path(self) -> Path:
        if self.is_remote:
            raise ValueError(f"{self.uri} is not a local path")
        return Path(self.uri).expanduser()  # published summaries write the home folder as ~


# --------------------------------------------------------------------------- clients


def s3_client(location: Location):
    """boto3 S3 client: standard retry mode (backoff on resets, 5xx, SlowDown), and checksums
    only where an operation requires them, so stores that reject the newest checksum headers
    (older MinIO, R2, many test servers) keep working; we verify sha256 ourselves."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "max_attempts": location.attempts},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"} if location.endpoint_url else None,
    )
    return boto3.client(
        "s3",
        endpoint_url=location.endpoint_url or os.environ.get("AWS_ENDPOINT_URL"),
        region_name=location.region,
        config=config,
    )


def arrow_filesystem(endpoint_url: str | None = None, region: str | None = None, attempts: int = 8):
    """pyarrow S3 filesystem with standard retries; credentials from the environment."""
    from pyarrow import fs

    options: dict[str, Any] = {
        "retry_strategy": fs.AwsStandardS3RetryStrategy(max_attempts=attempts),
        # With background writes, a part that fails to upload is only logged when the stream
        # is destroyed ("Error ignored"), and Ray Train registers a checkpoint that lacks the
        # file. Synchronous writes make the failure raise in ray.train.report instead.
        "background_writes": False,
    }
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urlparse(endpoint)
        options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme)
    if region:
        options["region"] = region
    return fs.S3FileSystem(**options)


def arrow_storage(location: Location) -> tuple[str, Any]:
    """``(storage_path, storage_filesystem)`` for Ray Train's ``RunConfig``."""
    if not location.is_remote:
        return str(location.path), None
    path = f"{location.bucket}/{location.key}".rstrip("/")
    return path, arrow_filesystem(location.endpoint_url, location.region, location.attempts)


def expand_remote(location: Location) -> list[str]:
    """``bucket/key`` paths for an s3:// file, prefix or glob (pyarrow cannot glob itself)."""
    from pyarrow import fs

    path = f"{location.bucket}/{location.key}".rstrip("/")
    if not any(ch in path for ch in "*?["):
        return [path]
    base = path[: min(path.index(ch) for ch in "*?[" if ch in path)].rsplit("/", 1)[0]
    selector = fs.FileSelector(base, recursive=True, allow_not_found=True)
    infos = arrow_filesystem(location.endpoint_url, location.region).get_file_info(selector)
    matches = sorted(i.path for i in infos if i.is_file and fnmatch.fnmatch(i.path, path))
    if not matches:
        raise FileNotFoundError(f"no objects match {location.uri}")
    return matches


# --------------------------------------------------------------------------- checksums


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def build_manifest(folder: Path, **extra: Any) -> dict[str, Any]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = [
        {"path": p.relative_to(folder).as_posix(), "size": p.stat().st_size, SHA_KEY: sha256_of(p)}
        for p in files
    ]
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": entries,
        **extra,
    }


# --------------------------------------------------------------------------- publish / pull


def publish(folder: Path, target: Location, **manifest_extra: Any) -> dict[str, Any]:
    """Copy a finished folder to ``target``: every file, verified, then the manifest last."""
    manifest = build_manifest(folder, **manifest_extra)
    if not target.is_remote:
        if target.path.resolve() != folder.resolve():
            shutil.copytree(folder, target.path, dirs_exist_ok=True)
    else:
        client = s3_client(target)
        for entry in manifest["files"]:
            _upload_verified(client, folder / entry["path"], target.join(entry["path"]), entry)
    write_text(target.join(MANIFEST), json.dumps(manifest, indent=2))
    return manifest


def _upload_verified(client, local: Path, target: Location, entry: dict[str, Any]) -> None:
    """One file up (retried by the client), then checked: size and sha256 as stored."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.upload_file(
            str(local), target.bucket, target.key, ExtraArgs={"Metadata": {SHA_KEY: entry[SHA_KEY]}}
        )
        head = client.head_object(Bucket=target.bucket, Key=target.key)
    except (S3UploadFailedError, ClientError, BotoCoreError) as exc:
        raise IncompleteUploadError(
            f"{target.uri}: upload failed after retries, no manifest written ({exc})"
        ) from exc
    stored = head.get("Metadata", {}).get(SHA_KEY)
    if head["ContentLength"] != entry["size"] or stored != entry[SHA_KEY]:
        raise IncompleteUploadError(f"{target.uri}: upload did not verify, no manifest written")


def read_manifest(source: Location) -> dict[str, Any]:
    try:
        manifest = json.loads(read_text(source.join(MANIFEST)))
    except FileNotFoundError:
        raise IncompleteUploadError(
            f"{source.uri} has no {MANIFEST}: an incomplete or interrupted upload"
        ) from None
    except ValueError:
        raise IncompleteUploadError(f"{source.uri}/{MANIFEST} is torn or not JSON") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise IncompleteUploadError(f"{source.uri}/{MANIFEST} has no list of files")
    return manifest


def pull(source: Location, destination: Path) -> dict[str, Any]:
    """Fetch exactly what the manifest lists, verified, into ``destination``; the manifest.

    Every entry must name a file inside the destination (no absolute paths, no ``..``).
    Files land in a scratch folder beside it and move into place only once every checksum
    verifies, so a failed pull leaves nothing that looks like a model. An earlier pull (a
    folder with a manifest) is replaced; a folder holding anything else is refused.
    """
    manifest = read_manifest(source)
    entries = [_entry_path(source, entry) for entry in manifest.get("files", [])]
    earlier = destination.exists() and any(destination.iterdir())
    if earlier and not (destination / MANIFEST).is_file():
        raise FileExistsError(
            f"{destination} holds other files: pull into an empty or a new folder"
        )
    destination.parent.mkdir(parents=True, exist_ok=True)
    client = s3_client(source) if source.is_remote else None
    scratch = Path(tempfile.mkdtemp(prefix=f".{destination.name}.pull-", dir=destination.parent))
    try:
        for entry, relative in zip(manifest["files"], entries, strict=True):
            local = scratch / relative
            local.parent.mkdir(parents=True, exist_ok=True)
            if client is not None:
                client.download_file(source.bucket, f"{source.key}/{relative}", str(local))
            else:
                shutil.copyfile(source.path / relative, local)
            if not matches(local, entry):
                raise IncompleteUploadError(f"{source.uri}/{relative}: checksum mismatch")
        (scratch / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if destination.exists():  # empty, or an earlier pull: out of the way first
            old = destination.with_name(f".{destination.name}.old-{os.getpid()}")
            destination.rename(old)
            scratch.rename(destination)
            shutil.rmtree(old)
        else:
            scratch.rename(destination)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return manifest


def matches(path: Path, entry: dict[str, Any]) -> bool:
    """Whether a local file is the one a manifest entry describes (size, then sha256)."""
    return (
        path.is_file()
        and path.stat().st_size == entry["size"]
        and sha256_of(path) == entry[SHA_KEY]
    )


def folder_problem(folder: Path) -> str | None:
    """Why a local copy of a published folder cannot be trusted, or None when it verifies.

    Every file the manifest lists must be there with its size and sha256 (files it does not
    list are ignored: they were not published). No manifest means an interrupted upload.
    """
    source = Location(str(folder))
    try:
        for entry in read_manifest(source)["files"]:
            relative = _entry_path(source, entry)
            if not matches(folder / relative, entry):
                return f"{relative} does not match {MANIFEST} (missing, truncated or changed)"
    except IncompleteUploadError as exc:
        return str(exc)
    return None


def _entry_path(source: Location, entry: dict[str, Any]) -> str:
    """A manifest entry's path, if it stays inside the folder it is pulled into (and the entry
    says what the file must be: its size and sha256)."""
    described = isinstance(entry, dict) and isinstance(entry.get("size"), int)
    if not described or not isinstance(entry.get(SHA_KEY), str):
        raise IncompleteUploadError(f"{source.uri}/{MANIFEST}: an entry without size or sha256")
    path = entry.get("path")
    parts = PurePosixPath(path).parts if isinstance(path, str) else ()
    if (
        not parts
        or PurePosixPath(path).is_absolute()
        or ".." in parts
        or "\\" in path
        or ":" in parts[0]
        or parts[-1] == MANIFEST
    ):
        raise IncompleteUploadError(
            f"{source.uri}/{MANIFEST}: refusing the entry {path!r}: not a file inside the folder"
        )
    return PurePosixPath(*parts).as_posix()


# --------------------------------------------------------------------------- small objects


def write_bytes(target: Location, data: bytes) -> None:
    if target.is_remote:
        s3_client(target).put_object(Bucket=target.bucket, Key=target.key, Body=data)
    else:  # atomically: a reader (or a crash) sees the old file or the new one, never half
        target.path.parent.mkdir(parents=True, exist_ok=True)
        handle, scratch = tempfile.mkstemp(prefix=f".{target.path.name}.", dir=target.path.parent)
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.replace(scratch, target.path)
        except BaseException:
            Path(scratch).unlink(missing_ok=True)
            raise


def write_text(target: Location, text: str) -> None:
    write_bytes(target, text.encode())


def read_bytes(source: Location) -> bytes:
    """Raises FileNotFoundError for a missing object or file."""
    if not source.is_remote:
        return source.path.read_bytes()
    from botocore.exceptions import ClientError

    try:
        body = s3_client(source).get_object(Bucket=source.bucket, Key=source.key)["Body"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            raise FileNotFoundError(source.uri) from None
        raise
    return body.read()


def read_text(source: Location) -> str:
    """Raises FileNotFoundError for a missing object or file."""
    return read_bytes(source).decode()


def remove_tree(root: Location, keep: frozenset[str] = frozenset()) -> int:
    """Delete everything below ``root`` but the files named in ``keep``; how many went."""
    keys = [k for k in list_keys(root) if k not in keep]
    if not root.is_remote:
        for key in keys:
            (root.path / key).unlink(missing_ok=True)
        for folder in sorted((p for p in root.path.rglob("*") if p.is_dir()), reverse=True):
            with contextlib.suppress(OSError):  # not empty: it holds a kept file
                folder.rmdir()
        return len(keys)
    client = s3_client(root)
    for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
        batch = [{"Key": f"{root.key}/{k}"} for k in keys[start : start + 1000]]
        client.delete_objects(Bucket=root.bucket, Delete={"Objects": batch, "Quiet": True})
    return len(keys)


def remove_file(target: Location) -> None:
    """Delete one file (gone already is fine)."""
    if target.is_remote:
        s3_client(target).delete_object(Bucket=target.bucket, Key=target.key)
    else:
        target.path.unlink(missing_ok=True)


def list_keys(root: Location) -> Iterator[str]:
    """Relative paths of every file below ``root``."""
    if not root.is_remote:
        if root.path.is_dir():
            for p in sorted(root.path.rglob("*")):
                if p.is_file():
                    yield p.relative_to(root.path).as_posix()
        return
    prefix = root.key.rstrip("/") + "/" if root.key else ""
    paginator = s3_client(root).get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=root.bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            yield item["Key"][len(prefix) :]
