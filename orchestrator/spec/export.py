"""The ``export`` section: the formats people deploy, besides the SentenceTransformer folder."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from orchestrator.spec.base import Distinct, Section

#: onnx: ``onnx/model.onnx`` (fp32); onnx_int8: ``onnx/model_qint8.onnx`` (weights quantized
#: to int8 by ONNX Runtime, activations at run time); openvino: ``openvino/openvino_model.xml``.
ExportFormat = Literal["onnx", "onnx_int8", "openvino"]


class ExportSpec(Section):
    """Runtime formats written into the exported model folder. Each is evaluated on the same
    test split as the PyTorch model, through its own runtime, so a format that loses quality
    shows in the run's table before anyone deploys it."""

    formats: Annotated[list[ExportFormat], Distinct] = Field(
        default_factory=list,
        description="Also export onnx (fp32), onnx_int8 (dynamic int8 weights) and/or openvino; "
        "each is evaluated on the test split and its figures and size go in the card, the "
        "report and summary.json.",
    )
