"""Runtime formats (``export.formats``): written where sentence-transformers' backends look,
and run through real ONNX Runtime and OpenVINO to the embeddings PyTorch gives."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from orchestrator.modeling import load_encoder
from orchestrator.runtimes import FORMAT_FILES, runtime_encoder, write_formats
from orchestrator.spec import load_spec

TEXTS = [
    "what color is the car",
    "the car is red and shiny and parked by the old green boat",
    "blue",
]


@pytest.fixture(scope="module")
def exported(tiny_model, corpora, tmp_path_factory):
    from tests.conftest import tiny_spec_dict

    spec = load_spec(tiny_spec_dict(tiny_model, corpora, tmp_path_factory.mktemp("runs")))
    folder = tmp_path_factory.mktemp("export") / "model"
    shutil.copytree(tiny_model, folder)
    written = write_formats(folder, ["onnx", "onnx_int8", "openvino"], spec.model)
    return spec, folder, written


def test_each_format_is_written_where_the_backends_look(exported):
    _, folder, written = exported
    assert [w.format for w in written] == ["onnx", "onnx_int8", "openvino"]
    for entry in written:
        assert entry.file == FORMAT_FILES[entry.format]
        assert (folder / entry.file).is_file()
        assert entry.size_bytes >= (folder / entry.file).stat().st_size > 0
    assert (folder / "openvino" / "openvino_model.bin").is_file()


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_fp32_runtimes_embed_as_pytorch_does(exported, fmt):
    spec, folder, _ = exported
    reference = load_encoder(str(folder), spec.model).encode(TEXTS)
    model = runtime_encoder(str(folder), fmt, spec.model)
    np.testing.assert_allclose(model.encode(TEXTS), reference, atol=1e-5)
    # Other batch sizes and lengths than the traced example: the graph's axes are dynamic.
    np.testing.assert_allclose(model.encode(TEXTS[1:2]), reference[1:2], atol=1e-5)


def test_int8_weights_embed_close_to_pytorch(exported):
    spec, folder, _ = exported
    reference = load_encoder(str(folder), spec.model).encode(TEXTS, normalize_embeddings=True)
    model = runtime_encoder(str(folder), "onnx_int8", spec.model)
    quantized = model.encode(TEXTS, normalize_embeddings=True)
    assert not np.allclose(quantized, reference, atol=1e-6)  # really another graph
    assert (quantized * reference).sum(axis=1).min() > 0.9


def test_only_the_formats_asked_for_are_kept(exported, tmp_path):
    spec, folder, _ = exported
    target = tmp_path / "model"
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns("onnx", "openvino"))
    (written,) = write_formats(target, ["openvino"], spec.model)
    assert written.format == "openvino" and (target / written.file).is_file()
    assert not (target / "onnx").exists()  # the intermediate ONNX graph is not kept
