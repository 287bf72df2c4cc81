"""Checks that need the file system: run on the laptop before anything reaches a cluster.

The spec itself (:mod:`orchestrator.spec`) is pure; here we look at the world it names:
corpora and evaluation files exist, the base model can be found, Matryoshka dims fit it.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import logging
from pathlib import Path

from orchestrator.assets import KNOWN_MODELS, SPEC_PREFIX, resolve_model
from orchestrator.data.files import EXTENSIONS, format_files
from orchestrator.spec import ExperimentSpec, SpecError, format_by_suffix

log = logging.getLogger("orchestrator")
_PREPARE_HINT = "run `python -m orchestrator prepare` to fetch the offline data and models"


#: What the first bytes of each format look like (JSON Lines: an object per line).
_SNIFF = {
    "jsonl": lambda head: head.lstrip()[:1] in (b"{", b""),
    "parquet": lambda head: head[:4] == b"PAR1",
}


def _path_problem(where: str, path: str, fmt: str, folder_ok: bool) -> str | None:
    """Why a spec's input path cannot be read as ``fmt``, or None.

    Remote paths must be ``s3://`` (checked by the reader on the cluster); local ones exist
    (``~`` expanded, a file named like a glob is that file), a folder or glob holds files of
    the format, and a file's first bytes look like its format.
    """
    if "://" in path:
        if path.startswith("s3://"):
            return None
        return f"{where}: {path}: the readers take local paths and s3:// URIs (lower case) only"
    local = Path(path).expanduser()
    if local.is_dir() and not folder_ok:
        return f"{where}: {path} is a folder; name the file"
    if local.exists():
        files = format_files(local, fmt)
    elif any(ch in path for ch in "*?["):
        files = [
            Path(m) for m in sorted(glob.glob(str(local), recursive=True)) if Path(m).is_file()
        ]
    else:
        return f"{where}: {path} does not exist ({_PREPARE_HINT})"
    if not files:
        return f"{where}: {path} holds no {fmt} files ({', '.join(EXTENSIONS[fmt])})"
    sniff = _SNIFF.get(fmt)
    with files[0].open("rb") as f:
        head = f.read(512)
    if sniff and not sniff(head):
        return f"{where}: {files[0]} does not look like {fmt} (it starts {head[:16]!r})"
    return None


def embedding_dim(model_path: str) -> int | None:
    """The output width of a local model folder, or None if it cannot be told without loading."""
    folder = Path(model_path)
    for dense in sorted(folder.glob("*_Dense/config.json")):
        cfg = json.loads(dense.read_text())
        dim = cfg.get("out_features")
        if dim:
            return int(dim)
    config = folder / "config.json"
    if config.is_file():
        cfg = json.loads(config.read_text())
        return cfg.get("hidden_size") or cfg.get("d_model")
    return None


def preflight(spec: ExperimentSpec) -> list[str]:
    """Raise :class:`SpecError` for problems that would fail a run; log and return warnings."""
    problems, warnings = [], []
    for name, source in spec.data.sources.items():
        where = f"data.sources.{name}.path"
        problems.append(_path_problem(where, source.path, source.format, folder_ok=True))
    for where, path in spec.held_out_files().items():
        fmt = "csv" if where.endswith("qrels") else format_by_suffix(path)
        problems.append(_path_problem(where, path, fmt, folder_ok=False))
    problems = [p for p in problems if p]

    dim = _check_model(spec.model.base, problems, warnings)
    if spec.lora and dim is not None:
        problems.extend(lora_target_problems(spec))
    guide = getattr(spec.loss, "guide", None)
    if guide is not None and guide.model != "base":
        _check_model(guide.model, problems, warnings, field="loss.guide.model")
    for field, dims in (
        ("loss.matryoshka_dims", spec.loss.matryoshka_dims),
        ("eval.matryoshka_dims", spec.eval.matryoshka_dims),
    ):
        if dims and dim and max(dims) > dim:
            problems.append(f"{field}: {max(dims)} exceeds the model's embedding size {dim}")
    problems.extend(missing_package_problems(spec))
    if problems:
        raise SpecError(problems, f"spec {spec.name!r}")
    warnings += temperature_warnings(spec)
    for warning in warnings:
        log.warning(warning)
    return warnings


def _check_model(
    base: str, problems: list[str], warnings: list[str], field: str = "model.base"
) -> int | None:
    """Can the model ``field`` names be loaded (or fetched)? Its embedding size where known."""
    try:
        model_path = resolve_model(base, fetch=False)
    except (FileNotFoundError, SpecError) as exc:  # spec:<earlier stage> not run (or invalid)
        problems.append(f"{field}: {exc}")
        return None
    if Path(model_path).is_dir():
        return embedding_dim(model_path)
    if base.startswith(SPEC_PREFIX):
        warnings.append(f"{field}: {base} is in object storage; `run` pulls it")
    elif base in KNOWN_MODELS:
        warnings.append(f"{field}: {base} is not downloaded yet; `run` fetches it")
        return KNOWN_MODELS[base].dim
    elif base.startswith(("/", "./", "../", "~")):
        problems.append(f"{field}: {base} does not exist")
    elif "/" not in base:
        problems.append(
            f"{field}: {base!r} is neither a folder, a known offline model "
            f"({', '.join(KNOWN_MODELS)}) nor a Hub id like 'org/name'"
        )
    return None


def lora_target_problems(spec: ExperimentSpec) -> list[str]:
    """``lora.target_modules`` the base model does not have (peft would fail on the cluster).

    The model is built from its config on the meta device: module names, no weights read.
    """
    import torch
    from transformers import AutoConfig, AutoModel

    from orchestrator.assets import transformer_folder

    folder = transformer_folder(resolve_model(spec.model.base, fetch=False))
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    with torch.device("meta"):
        model = AutoModel.from_config(config, trust_remote_code=spec.model.trust_remote_code)
    names = [name for name, _ in model.named_modules() if name]
    leaves = {name.rsplit(".", 1)[-1] for name in names}
    missing = [
        target
        for target in spec.lora.target_modules
        if target not in leaves and not any(n.endswith("." + target) for n in names)
    ]
    if not missing:
        return []
    linear = sorted(
        {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    )
    return [
        f"lora.target_modules: {missing} are not modules of {spec.model.base}; its linear "
        f"layers are {linear}"
    ]


#: The modules each optional step imports, and the extra that installs them.
_NEEDS = {
    "onnx": (("onnx", "onnxscript", "onnxruntime"), "export"),
    "onnx_int8": (("onnx", "onnxscript", "onnxruntime"), "export"),
    "openvino": (("onnx", "onnxscript", "openvino"), "export"),
    "quantization": (("usearch",), "quantization"),
}


def missing_package_problems(spec: ExperimentSpec) -> list[str]:
    """Formats and quantized evaluations whose packages are not installed: found now rather
    than in the export task, after the training they would have ended."""
    wanted = [(f"export.formats: {f}", _NEEDS[f]) for f in spec.export.formats]
    if spec.eval.quantization:
        wanted.append(("eval.quantization", _NEEDS["quantization"]))
    problems = []
    for field, (modules, extra) in wanted:
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        if missing:
            problems.append(
                f"{field} needs {', '.join(missing)}: pip install 'embedding-orchestrator[{extra}]'"
            )
    return problems


def temperature_warnings(spec: ExperimentSpec) -> list[str]:
    """A τ far (over 2x) from the one the base model was trained with, for contrastive losses.

    A model learned its similarity scale at that τ; training far from it first spends steps
    undoing the scale (a much lower τ) or flattens the softmax over negatives (a higher one).
    """
    known = KNOWN_MODELS.get(spec.model.base)
    tau = getattr(spec.loss, "temperature", None)
    if known is None or known.trained_temperature is None or tau is None:
        return []
    ratio = tau / known.trained_temperature
    if 0.5 <= ratio <= 2:
        return []
    return [
        f"loss.temperature: {tau} is {ratio:.2g}x the τ {spec.model.base} was trained with "
        f"({known.trained_temperature}, scale {1 / known.trained_temperature:.0f}); "
        "expect the first steps to re-learn the similarity scale"
    ]


def validated(spec, overrides: list[str] | None = None, check_files: bool = True) -> ExperimentSpec:
    """A spec loaded and checked: its fields, by default the files and model it names
    (:func:`preflight`), and a search's space. What ``orchestrator validate`` and every
    submission run on the laptop before anything reaches a cluster."""
    from orchestrator.search_space import check_space
    from orchestrator.spec import load_spec

    spec = load_spec(spec, overrides)
    if check_files:
        preflight(spec)
    if spec.tune:
        check_space(spec)
    return spec
