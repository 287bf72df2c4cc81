"""Compiling sources on a real local Ray: chunks, fragments, the manifest, the report, reuse."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import orchestrator.data.compile as compiling
from orchestrator.data.compile import compile_source, compile_sources, plan_chunks, source_files
from orchestrator.data.feed import fragments_of
from orchestrator.data.tokenize import token_encoder
from orchestrator.errors import BadRowsError
from orchestrator.spec import load_spec
from tests.conftest import pairs, tiny_spec_dict, write_jsonl


@pytest.fixture
def spec_for(ray_cluster, tiny_model, corpora, tmp_path):
    def make(path, fmt="jsonl", **data):
        raw = tiny_spec_dict(tiny_model, corpora, tmp_path)
        raw["data"]["sources"] = {
            "s": {
                "format": fmt,
                "path": str(path),
                "columns": {"anchor": "question", "positive": "answer"},
            }
        }
        raw["data"].update(data)
        return load_spec(raw)

    return make


def compiled_rows(compiled) -> list[list[int]]:
    """Anchor token ids of every compiled row, in file order."""
    out = []
    for fragment in compiled.manifest["fragments"]:
        table = pq.read_table(compiled.location.path / fragment["path"])
        out += table["anchor__ids"].to_pylist()
    return out


def test_a_file_split_in_byte_ranges_compiles_every_row_once_with_its_line(
    spec_for, tiny_model, tmp_path, monkeypatch
):
    rows = pairs(4, 300)
    lines = [json.dumps(r) for r in rows]
    lines[123] = '{"question": "", "answer": "x"}'
    lines[250] = "not json"
    lines.insert(60, "")  # a blank line is numbered too
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(compiling, "CHUNK_BYTES", 1000)  # about 15 chunks
    monkeypatch.setattr(compiling, "FRAGMENT_ROWS", 32)
    spec = spec_for(path)
    files = source_files(spec.data.sources["s"])
    assert len(plan_chunks(spec.data.sources["s"], files)) > 10

    compiled = compile_source(spec, "s", spec.data.sources["s"], tiny_model)
    good = [r for i, r in enumerate(rows) if i not in (123, 250)]
    encode = token_encoder(tiny_model, 32)
    assert compiled_rows(compiled) == [list(ids) for ids in encode([r["question"] for r in good])]
    assert compiled.report.rows == compiled.manifest["rows"] == 298
    assert compiled.report.lines() == [
        f"{path}:125: empty 'question' (anchor)",  # 0-based 123, after the blank line 61
        f"{path}:252: invalid JSON (Expecting value at column 1)",
    ]
    assert all(f["rows"] <= 32 for f in compiled.manifest["fragments"])
    assert compiled.manifest["tokens"] == sum(f["tokens"] for f in compiled.manifest["fragments"])


def test_a_compiled_source_is_reused_until_its_files_or_tokenizing_change(
    spec_for, tiny_model, tmp_path
):
    path = write_jsonl(tmp_path / "s.jsonl", pairs(5, 40))
    spec = spec_for(path)
    first = compile_source(spec, "s", spec.data.sources["s"], tiny_model)
    again = compile_source(spec, "s", spec.data.sources["s"], tiny_model)
    assert (first.reused, again.reused) == (False, True)
    assert again.location == first.location

    shorter = spec.model_copy(update={"model": spec.model.model_copy(update={"max_seq_length": 8})})
    assert (
        compile_source(shorter, "s", spec.data.sources["s"], tiny_model).location != first.location
    )
    write_jsonl(path, pairs(6, 40))
    os.utime(path, ns=(1, 1))
    changed = compile_source(spec, "s", spec.data.sources["s"], tiny_model)
    assert not changed.reused and changed.location != first.location


def test_max_rows_reads_a_prefix_of_the_same_compile(spec_for, tiny_model, tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", pairs(5, 40))
    spec = spec_for(path)
    source = spec.data.sources["s"].model_copy(update={"max_rows": 25})
    compiled = compile_source(spec, "s", source, tiny_model)
    assert compiled.report.rows == 25 and compiled.manifest["rows"] == 40
    assert sum(f.rows for f in fragments_of(compiled.manifest, 25)) == 25


def test_parquet_compiles_by_row_groups_and_numbers_rows_across_them(
    spec_for, tiny_model, tmp_path, monkeypatch
):
    rows = pairs(7, 50)
    rows[33]["answer"] = ""
    path = tmp_path / "s.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=10)
    monkeypatch.setattr(compiling, "CHUNK_ROWS", 20)
    spec = spec_for(path, "parquet")
    assert len(plan_chunks(spec.data.sources["s"], source_files(spec.data.sources["s"]))) == 3
    compiled = compile_source(spec, "s", spec.data.sources["s"], tiny_model)
    assert compiled.report.rows == 49
    assert compiled.report.lines() == [f"{path}:34: empty 'answer' (positive)"]


def test_csv_is_compiled_and_on_bad_rows_fail_names_the_row(spec_for, tiny_model, tmp_path):
    path = tmp_path / "s.csv"
    path.write_text('question,answer\nq1,a1\n"multi\nline",a2\n,a3\n')
    spec = spec_for(path, "csv", on_bad_rows="fail")
    with pytest.raises(BadRowsError, match=r"s\.csv:5: empty 'question'"):
        compile_sources(spec, tiny_model)


def test_the_estimate_reads_a_compiled_sources_manifest(
    spec_for, tiny_model, tmp_path, monkeypatch
):
    import orchestrator.estimate as estimating

    path = write_jsonl(tmp_path / "s.jsonl", pairs(5, 40))
    spec = spec_for(path)
    compiled = compile_source(spec, "s", spec.data.sources["s"], tiny_model)
    monkeypatch.setattr(estimating, "_count", None)  # must not read the file again
    (source,) = estimating.estimate(spec).sources
    assert source.rows == 40
    assert source.tokens_per_row == compiled.manifest["tokens"] / 40
