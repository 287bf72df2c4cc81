"""Pair corpora read through a real local Ray: canonical columns, bad-row reports, fail mode."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.data.sources import converted, read_source, read_sources
from orchestrator.errors import BadRowsError
from orchestrator.spec import DataSpec, parse_spec

MAPPING = {"anchor": "question", "positive": "answer"}


# --------------------------------------------------------------------------- converted


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"question": "q", "answer": "a"}, None),
        ({"answer": "a"}, "missing 'question' (anchor)"),
        ({"question": None, "answer": "a"}, "missing 'question' (anchor)"),
        ({"question": 3, "answer": "a"}, "'question' (anchor) is int, not text"),
        ({"question": ["q"], "answer": "a"}, "'question' (anchor) is list, not text"),
        ({"question": "q", "answer": ""}, "empty 'answer' (positive)"),
        ({"question": "q", "answer": " \t\n"}, "empty 'answer' (positive)"),
        ({"question": "caf\ufffd", "answer": "a"}, "garbled text in 'question' (anchor)"),
        (["q", "a"], "expected an object with columns ['answer', 'question']"),
        ("q", "expected an object"),
    ],
    ids=[
        "good",
        "missing",
        "none",
        "int",
        "list",
        "empty",
        "whitespace",
        "garbled",
        "list-record",
        "string-record",
    ],
)
def test_converted(record, problem):
    row, found = converted(record, MAPPING)
    if problem is None:
        assert found is None and row == {"anchor": record["question"], "positive": "a"}
    else:
        assert row is None and found is not None and found.startswith(problem)


def test_problem_names_a_column_without_its_role_when_canonical():
    assert converted({"anchor": "", "positive": "p"}, {"anchor": "anchor"})[1] == "empty 'anchor'"


SCORED = {"anchor": "s1", "positive": "s2", "score": "sim"}
LABELED = {"anchor": "s1", "positive": "s2", "label": "same"}


@pytest.mark.parametrize(
    ("mapping", "value", "number", "problem"),
    [
        (SCORED, 4.5, 4.5, None),
        (SCORED, 3, 3.0, None),
        (SCORED, " 0.25 ", 0.25, None),  # a CSV cell
        (SCORED, "high", None, "'sim' (score) is 'high', not a number"),
        (SCORED, float("nan"), None, "'sim' (score) is nan, not a number"),
        (SCORED, None, None, "missing 'sim' (score)"),
        (LABELED, 1, 1.0, None),
        (LABELED, True, 1.0, None),
        (LABELED, "0", 0.0, None),
        (LABELED, 2, None, "'same' (label) is 2; labels are 0 or 1"),
        (LABELED, "yes", None, "'same' (label) is 'yes', not a number"),
    ],
)
def test_scores_and_labels_are_numbers(mapping, value, number, problem):
    column = mapping.get("score", mapping.get("label"))
    row, found = converted({"s1": "a", "s2": "b", column: value}, mapping)
    assert found == problem
    if number is not None:
        canonical = "score" if "score" in mapping else "label"
        assert row == {"anchor": "a", "positive": "b", canonical: number}


# --------------------------------------------------------------------------- reading on Ray


@pytest.fixture(scope="module", autouse=True)
def _ray(ray_cluster):
    """Every test here reads through a real local Ray (the session's instance)."""


def source(path: Path | str, fmt: str = "jsonl", loss: str = "infonce", **fields):
    """A validated source entry of a spec (built through the real spec parser)."""
    entry = {"format": fmt, "path": str(path), **fields}
    return data_spec({"s": entry}, loss).sources["s"]


def data_spec(sources: dict, loss: str = "infonce", **fields) -> DataSpec:
    raw = {
        "name": "t",
        "model": {"base": "m"},
        "data": {
            "sources": sources,
            "eval": {"corpus": "c", "queries": "q", "qrels": "r"},
            **fields,
        },
        "loss": {"kind": loss},
        "train": {"batch_size": 4},  # small test files still fill a batch
    }
    return parse_spec(raw).data


def rows_of(dataset) -> list[dict]:
    return sorted(dataset.take_all(), key=lambda r: r["anchor"])


def qa(i: int, **extra) -> dict:
    return {"question": f"q{i}", "answer": f"a{i}", "wrong": f"w{i}", **extra}


QA_COLUMNS = {"anchor": "question", "positive": "answer", "negatives": ["wrong"]}


@pytest.fixture(scope="module")
def jsonl_read(tmp_path_factory):
    """A JSONL file with 4 good rows and 3 broken ones, read once."""
    path = tmp_path_factory.mktemp("jsonl") / "train.jsonl"
    lines = [
        json.dumps(qa(1)).encode(),  # line 1
        b'{"question": "q2", "answer": ',  # line 2: invalid JSON
        json.dumps(qa(3)).encode(),  # line 3
        b"",  # line 4: blank lines are skipped, not counted as bad
        json.dumps(qa(5, answer="")).encode(),  # line 5: empty field
        '{"question": "caf\xe9", "answer": "a6", "wrong": "w6"}'.encode("latin-1"),  # 6: bad UTF-8
        json.dumps(qa(7)).encode(),  # line 7
        json.dumps(qa(8)).encode(),  # line 8
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    dataset, report = read_source("s", source(path, columns=QA_COLUMNS))
    return path, rows_of(dataset), report


def test_jsonl_report_counts_rows_and_bad_rows(jsonl_read):
    _, _, report = jsonl_read
    assert (report.name, report.rows, report.bad_rows) == ("s", 4, 3)


def test_jsonl_report_names_file_line_and_problem(jsonl_read):
    path, _, report = jsonl_read
    lines = report.lines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{path}:2: invalid JSON")
    assert lines[1] == f"{path}:5: empty 'answer' (positive)"
    assert lines[2] == f"{path}:6: garbled text in 'question' (anchor) (invalid UTF-8 / U+FFFD)"


def test_jsonl_good_rows_are_kept_in_canonical_columns(jsonl_read):
    _, rows, _ = jsonl_read
    assert rows == [
        {"anchor": f"q{i}", "positive": f"a{i}", "negative_1": f"w{i}"} for i in (1, 3, 7, 8)
    ]


def test_columns_without_negatives_give_anchor_and_positive_only(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(qa(1)) + "\n")
    pairs_only = {"anchor": "question", "positive": "answer"}
    dataset, _ = read_source("s", source(path, columns=pairs_only))
    assert dataset.take_all() == [{"anchor": "q1", "positive": "a1"}]


def test_jsonl_text_with_a_unicode_line_separator_is_one_row(tmp_path):
    path = tmp_path / "u2028.jsonl"
    rows = [qa(1, answer="first\u2028second"), qa(2)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    dataset, report = read_source("s", source(path, columns=QA_COLUMNS))
    assert report.bad_rows == 0 and report.rows == 2
    assert {r["positive"] for r in dataset.take_all()} == {"first\u2028second", "a2"}


def test_csv_line_numbers_count_the_header(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("question,answer,wrong\nq1,a1,w1\nq2,,w2\nq3,a3,w3\n,a4,w4\n")
    dataset, report = read_source("s", source(path, "csv", columns=QA_COLUMNS))
    assert (report.rows, report.bad_rows) == (2, 2)
    assert report.lines() == [
        f"{path}:3: empty 'answer' (positive)",
        f"{path}:5: empty 'question' (anchor)",
    ]
    assert [r["anchor"] for r in rows_of(dataset)] == ["q1", "q3"]


def test_scored_csv_keeps_numeric_scores_and_reports_bad_ones(tmp_path):
    path = tmp_path / "sts.csv"
    path.write_text("s1,s2,sim\na cat,a kitten,4.5\na cat,a car,n/a\na dog,a hound,3\n")
    columns = {"anchor": "s1", "positive": "s2", "score": "sim"}
    dataset, report = read_source("s", source(path, "csv", "cosent", columns=columns))
    assert report.lines() == [f"{path}:3: 'sim' (score) is 'n/a', not a number"]
    assert rows_of(dataset) == [
        {"anchor": "a cat", "positive": "a kitten", "score": 4.5},
        {"anchor": "a dog", "positive": "a hound", "score": 3.0},
    ]


def test_csv_with_another_delimiter(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("question\tanswer\nq1\ta1, with a comma\n")
    cols = {"anchor": "question", "positive": "answer"}
    dataset, report = read_source("s", source(path, "csv", columns=cols, delimiter="\t"))
    assert report.bad_rows == 0
    assert rows_of(dataset) == [{"anchor": "q1", "positive": "a1, with a comma"}]


def test_csv_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("question,answer\nq1,a1\n".encode("utf-8-sig"))
    cols = {"anchor": "question", "positive": "answer"}
    _, report = read_source("s", source(path, "csv", columns=cols))
    assert (report.rows, report.bad_rows) == (1, 0)


def test_parquet_rows_are_numbered_from_one(tmp_path):
    path = tmp_path / "pairs.parquet"
    table = pa.table(
        {
            "question": ["q1", "q2", None, "q4"],
            "answer": ["a1", "a2", "a3", "   "],
            "wrong": ["w1", "w2", "w3", "w4"],
        }
    )
    pq.write_table(table, path)
    dataset, report = read_source("s", source(path, "parquet", columns=QA_COLUMNS))
    assert (report.rows, report.bad_rows) == (2, 2)
    assert report.lines() == [
        f"{path}:3: missing 'question' (anchor)",
        f"{path}:4: empty 'answer' (positive)",
    ]
    assert rows_of(dataset)[1] == {"anchor": "q2", "positive": "a2", "negative_1": "w2"}


def test_parquet_non_text_column_is_reported(tmp_path):
    path = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"anchor": [1], "positive": ["p"]}), path)
    _, report = read_source("s", source(path, "parquet"))
    assert report.lines() == [f"{path}:1: 'anchor' is int, not text"]


def test_max_rows_limits_clean_rows(tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps(qa(i)) + "\n" for i in range(20)))
    dataset, report = read_source("s", source(path, columns=QA_COLUMNS, max_rows=5))  # >= 4
    assert report.rows == 5 and dataset.count() == 5


@pytest.fixture
def folder(tmp_path) -> Path:
    """Two JSONL files (3 + 2 rows) and a file of another kind that must be ignored."""
    root = tmp_path / "folder"
    root.mkdir()
    (root / "one.jsonl").write_text("".join(json.dumps(qa(i)) + "\n" for i in range(3)))
    (root / "two.jsonl").write_text("".join(json.dumps(qa(i)) + "\n" for i in range(3, 5)))
    (root / "notes.txt").write_text("not a corpus\n")
    return root


@pytest.mark.parametrize(
    ("pattern", "anchors"),
    [
        ("{root}", ["q0", "q1", "q2", "q3", "q4"]),
        ("{root}/*.jsonl", ["q0", "q1", "q2", "q3", "q4"]),
        ("{root}/t*.jsonl", ["q3", "q4"]),
    ],
    ids=["directory", "glob", "narrow-glob"],
)
def test_directories_and_globs_resolve(folder, pattern, anchors):
    dataset, report = read_source("s", source(pattern.format(root=folder), columns=QA_COLUMNS))
    assert (report.rows, report.bad_rows) == (len(anchors), 0)
    assert [r["anchor"] for r in rows_of(dataset)] == anchors


def test_report_counts_the_files_read(folder):
    _, report = read_source("s", source(folder, columns=QA_COLUMNS))
    assert report.files == 2


def test_glob_without_matches_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no files match"):
        read_source("s", source(tmp_path / "*.jsonl"))


def test_read_sources_reads_every_source_and_skips_bad_rows(jsonl_read, folder):
    path, _, _ = jsonl_read
    spec = data_spec(
        {
            "broken": {"format": "jsonl", "path": str(path), "columns": QA_COLUMNS},
            "clean": {"format": "jsonl", "path": str(folder), "columns": QA_COLUMNS},
        }
    )
    datasets, reports = read_sources(spec)
    assert set(datasets) == {"broken", "clean"}
    assert [(r.name, r.rows, r.bad_rows) for r in reports] == [
        ("broken", 4, 3),
        ("clean", 5, 0),
    ]


def test_on_bad_rows_fail_names_source_file_and_line(jsonl_read):
    path, _, _ = jsonl_read
    spec = data_spec(
        {"broken": {"format": "jsonl", "path": str(path), "columns": QA_COLUMNS}},
        on_bad_rows="fail",
    )
    with pytest.raises(BadRowsError) as info:
        read_sources(spec)
    message = str(info.value)
    assert "data.sources.broken: 3 bad row(s)" in message
    assert f"{path}:2: invalid JSON" in message


@pytest.mark.parametrize("pattern", ["data/colors.jsonl", "data/", "data/col*.jsonl"])
def test_s3_sources_stream_from_a_bucket_with_file_and_line(pattern, corpora, bucket, s3_endpoint):
    """The same reader over s3:// (file, prefix, glob) reports broken rows by object and line."""
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).upload_file(
        str(corpora["colors"]), bucket, "data/colors.jsonl"
    )
    entry = source(f"s3://{bucket}/{pattern}", columns=QA_COLUMNS, endpoint_url=s3_endpoint)
    dataset, report = read_source("s", entry)
    assert (report.files, report.rows, report.bad_rows) == (1, 96, 1)
    assert report.lines() == [f"s3://{bucket}/data/colors.jsonl:6: empty 'question' (anchor)"]
    assert dataset.count() == 96
