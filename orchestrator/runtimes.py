"""The exported model in the formats people deploy, and each run through its own runtime.

``export.formats`` writes, inside the exported SentenceTransformer folder and in the layout
sentence-transformers' ``backend="onnx"``/``"openvino"`` loaders read:

- ``onnx``: ``onnx/model.onnx``, the transformer in fp32 (inputs ``input_ids``,
  ``attention_mask`` and, where the model has them, ``token_type_ids``; output
  ``last_hidden_state``; batch and sequence length dynamic);
- ``onnx_int8``: ``onnx/model_qint8.onnx``, the same graph with its weights quantized to int8
  by ONNX Runtime (dynamic quantization: activations are quantized at run time);
- ``openvino``: ``openvino/openvino_model.xml`` (+ ``.bin``), the ONNX graph converted by
  OpenVINO.

Pooling and normalization stay in the folder's other modules, so each format is evaluated by
putting its runtime where the PyTorch transformer was (:func:`runtime_encoder`) and running
the same evaluators on the same test split.

Why not sentence-transformers' own ``export_*`` helpers and ``backend="onnx"``: they go
through optimum's ONNX Runtime classes, and optimum-onnx (0.1.0, the newest on PyPI) requires
transformers < 4.58 while sentence-transformers 6 requires transformers >= 5, so the two
cannot be installed together. The graph is exported with PyTorch's own ONNX exporter
(``torch.onnx.export``, dynamo), quantized with ONNX Runtime's ``quantize_dynamic`` (what
optimum's dynamic quantizer calls) and converted with OpenVINO's ``convert_model``; the file
names are the ones the sentence-transformers loaders look for.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from orchestrator.modeling import load_encoder, transformer_of

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from orchestrator.spec import ExportFormat, ModelSpec

#: Each format's main file, relative to the model folder.
FORMAT_FILES: dict[str, str] = {
    "onnx": "onnx/model.onnx",
    "onnx_int8": "onnx/model_qint8.onnx",
    "openvino": "openvino/openvino_model.xml",
}
#: The tokenizer outputs a transformer may take, in the order the graph names them.
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_OUTPUT = "last_hidden_state"
#: ONNX files hold at most 2 GiB; larger weights go to an external data file beside them.
_ONNX_FILE_LIMIT = 2**31 - 2**26


@dataclass(frozen=True)
class ExportedFormat:
    """One format as written: its main file (relative to the model folder) and its bytes
    (every file of the format, weights included)."""

    format: str
    file: str
    size_bytes: int


def write_formats(
    model_dir: Path, formats: list[ExportFormat], spec: ModelSpec
) -> list[ExportedFormat]:
    """Write ``formats`` into the exported model folder ``model_dir``.

    The fp32 ONNX graph is the source of the other two; without ``onnx`` among the formats it
    is made in a scratch folder and not kept.
    """
    if not formats:
        return []
    with tempfile.TemporaryDirectory() as scratch:
        onnx_path = (
            model_dir / FORMAT_FILES["onnx"] if "onnx" in formats else Path(scratch) / "model.onnx"
        )
        _export_onnx(load_encoder(str(model_dir), spec, "cpu"), onnx_path)
        if "onnx_int8" in formats:
            _quantize_int8(onnx_path, model_dir / FORMAT_FILES["onnx_int8"])
        if "openvino" in formats:
            _convert_openvino(onnx_path, model_dir / FORMAT_FILES["openvino"])
    return [ExportedFormat(f, FORMAT_FILES[f], _format_bytes(model_dir, f)) for f in formats]


def _export_onnx(model: SentenceTransformer, path: Path) -> None:
    """The transformer of ``model`` as an ONNX graph with dynamic batch and sequence length.

    The dynamo exporter: the TorchScript one traces the attention mask's shape handling of
    transformers 5 into constants, and its graph gives wrong embeddings for other lengths.
    """

    transformer = transformer_of(model).eval()
    example = model.preprocess(["an example text to trace", "and a second, longer one to pad"])
    inputs = {name: example[name] for name in _INPUTS if name in example}
    dims = {"batch": torch.export.Dim("batch"), "sequence": torch.export.Dim("sequence")}
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = sum(p.numel() * p.element_size() for p in transformer.parameters())
    with _quiet_exporters():
        torch.onnx.export(
            _LastHiddenState(transformer).eval(),
            (),
            str(path),
            kwargs=inputs,
            input_names=list(inputs),
            output_names=[_OUTPUT],
            dynamic_shapes={name: {0: dims["batch"], 1: dims["sequence"]} for name in inputs},
            external_data=weights > _ONNX_FILE_LIMIT,
            dynamo=True,
            verbose=False,
        )


class _LastHiddenState(torch.nn.Module):
    """The transformer with tensors in and one tensor out, as the ONNX graph takes them."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:  # BERT-like models; others have none
            inputs["token_type_ids"] = token_type_ids
        return self.transformer(**inputs, return_dict=True).last_hidden_state


def _quantize_int8(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_exporters():
        quantize_dynamic(
            source,
            target,
            weight_type=QuantType.QInt8,
            use_external_data_format=source.with_suffix(".onnx.data").exists(),
        )


def _convert_openvino(source: Path, target: Path) -> None:
    import openvino

    target.parent.mkdir(parents=True, exist_ok=True)
    # fp32 weights: the format is evaluated as exported; fp16 is a choice for the deployer.
    openvino.save_model(openvino.convert_model(str(source)), str(target), compress_to_fp16=False)


def _format_bytes(model_dir: Path, fmt: str) -> int:
    main = model_dir / FORMAT_FILES[fmt]
    companions = [main.with_suffix(".bin"), main.with_suffix(".onnx.data")]
    return sum(p.stat().st_size for p in (main, *companions) if p.exists())


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    """Silence what the exporters say that is not a problem: torch's notes that torchvision's
    operators are not registered (no vision ops here) and that two axes share a name, its
    deprecation warnings from inside torch.export, ONNX Runtime's advice to pre-process the
    graph (shape inference that dynamic quantization of MatMuls does not need)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


# --------------------------------------------------------------------------- running a format


def runtime_encoder(model_dir: str, fmt: str, spec: ModelSpec) -> SentenceTransformer:
    """The exported model with its transformer run by ``fmt``'s runtime (ONNX Runtime or
    OpenVINO); tokenizer, pooling, normalization and prompts are the folder's own."""
    model = load_encoder(model_dir, spec, "cpu")
    module = model[0]
    path = str(Path(model_dir) / FORMAT_FILES[fmt])
    runner = _OpenVinoRunner(path) if fmt == "openvino" else _OnnxRuntimeRunner(path)
    module.model = _RuntimeTransformer(runner, transformer_of(model).config)
    return model


class _OnnxRuntimeRunner:
    def __init__(self, path: str) -> None:
        import onnxruntime

        self._session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self._session.get_inputs()]

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self._session.run([_OUTPUT], feeds)[0]


class _OpenVinoRunner:
    def __init__(self, path: str) -> None:
        import openvino

        self._compiled = openvino.Core().compile_model(path, "CPU")
        self.inputs = [i.get_any_name() for i in self._compiled.inputs]

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self._compiled(feeds)[self._compiled.output(_OUTPUT)]


class _RuntimeTransformer(torch.nn.Module):
    """Stands where the Hugging Face model stood in the Transformer module: takes the
    tokenizer's tensors, returns ``last_hidden_state`` from the runtime (what optimum's
    ``ORTModelForFeatureExtraction`` does for sentence-transformers' ONNX backend)."""

    def __init__(self, runner: _OnnxRuntimeRunner | _OpenVinoRunner, config: Any) -> None:
        super().__init__()
        self.runner = runner
        self.config = config

    def forward(self, **features: Any) -> dict[str, torch.Tensor]:
        feeds = {name: features[name].cpu().numpy() for name in self.runner.inputs}
        return {_OUTPUT: torch.from_numpy(np.asarray(self.runner(feeds)))}
