"""Pair corpora: rows mapped to canonical columns and cleaned, broken ones reported.

Ray Data's own JSON/CSV readers stop at the first malformed row and drop file positions, so a
small datasource reads each file itself and tags every row with its file, line and — when the
row cannot be used — the reason. Broken rows are counted and reported per source
("train.jsonl:6: empty 'question' (anchor)") and dropped or, with ``on_bad_rows: fail``,
stop the run before training; every usable row is kept.
"""

from __future__ import annotations

import csv
import glob
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data.datasource import FileBasedDatasource

from orchestrator.data.files import EXTENSIONS, format_files
from orchestrator.errors import BadRowsError
from orchestrator.spec import ANCHOR, LABEL, POSITIVE, SCORE
from orchestrator.storage import Location, arrow_filesystem, expand_remote

if TYPE_CHECKING:
    import ray.data

    from orchestrator.spec import ColumnMap, DataSpec, Source

FILE, LINE, PROBLEM = "_file", "_line", "_problem"
BLOCK_ROWS = 8192
REPORTED_EXAMPLES = 5
Parsed = tuple[int, Any, str | None]


def canonical_columns(columns: ColumnMap) -> dict[str, str]:
    """Canonical column → the file's column: anchor, positive, negative_1..n, score or label."""
    mapping = {ANCHOR: columns.anchor, POSITIVE: columns.positive}
    mapping.update({f"negative_{i}": name for i, name in enumerate(columns.negatives, start=1)})
    numbers = {SCORE: columns.score, LABEL: columns.label}
    mapping.update({canonical: name for canonical, name in numbers.items() if name})
    return mapping


def _number(value: Any) -> float | None:
    """A JSON/Parquet number or a CSV cell holding one; None when it is neither."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def converted(record: Any, mapping: dict[str, str]) -> tuple[dict[str, Any] | None, str | None]:
    """(canonical row, None) for a usable record, or (None, why it cannot be a row)."""
    if not isinstance(record, dict):
        return None, f"expected an object with columns {sorted(mapping.values())}"
    row = {}
    for canonical, column in mapping.items():
        label = f"{column!r}" if column == canonical else f"{column!r} ({canonical})"
        value = record.get(column)
        if column not in record or value is None:
            return None, f"missing {label}"
        if canonical in (SCORE, LABEL):
            number = _number(value)
            if number is None or number != number:  # NaN
                return None, f"{label} is {value!r}, not a number"
            if canonical == LABEL and number not in (0.0, 1.0):
                return None, f"{label} is {value!r}; labels are 0 or 1"
            row[canonical] = number
            continue
        if not isinstance(value, str):
            return None, f"{label} is {type(value).__name__}, not text"
        if not value.strip():
            return None, f"empty {label}"
        if "\ufffd" in value:
            return None, f"garbled text in {label} (invalid UTF-8 / U+FFFD)"
        row[canonical] = value
    return row, None


def parse_records(data: bytes, file_format: str, delimiter: str = ",") -> Iterator[Parsed]:
    """(line or row number, record, parse problem) for every row of one file's bytes."""
    yield from read_records(pa.BufferReader(data), file_format, delimiter)


@dataclass
class LineCount:
    """Lines a JSONL range held, blank ones too (what the next range's numbers start after)."""

    lines: int = 0


def read_records(
    f: pa.NativeFile,
    file_format: str,
    delimiter: str = ",",
    start: int = 0,
    stop: int = -1,
    count: LineCount | None = None,
) -> Iterator[Parsed]:
    """(line or row number, record, parse problem) for the rows of an open file, streamed.

    JSONL: the lines that begin in bytes ``[start, stop)`` (``stop=-1``: to the end), numbered
    from 1 at ``start`` (so a range's numbers are offset by the lines of the ranges before
    it). Parquet: row groups ``[start, stop)``, numbered from 1 at the first of them. CSV:
    the whole file (a quoted cell may hold a newline, so a byte range cannot be parsed alone).
    Nothing holds more than a line, a CSV record or a row group in memory.
    """
    if file_format == "parquet":
        parquet = pq.ParquetFile(f)
        stop = parquet.num_row_groups if stop < 0 else stop
        number = 0
        for group in range(start, stop):
            for record in parquet.read_row_group(group).to_pylist():
                number += 1
                yield number, record, None
        return
    if file_format == "csv":
        # Bad bytes show up as U+FFFD (reported as garbled); a BOM (Excel's "CSV UTF-8") goes.
        text = io.TextIOWrapper(f, encoding="utf-8-sig", errors="replace", newline="")
        reader = csv.DictReader(text, delimiter=delimiter)
        for record in reader:
            yield reader.line_num, record, None
        return
    yield from _json_lines(f, start, stop, count or LineCount())


def _json_lines(f: pa.NativeFile, start: int, stop: int, count: LineCount) -> Iterator[Parsed]:
    """JSON Lines that begin in ``[start, stop)``: a line belongs to the range of its first
    byte, so consecutive ranges read every line exactly once."""
    if start > 0:
        f.seek(start - 1)
    lines = io.BufferedReader(f, buffer_size=1 << 20)
    position = start
    if start > 0:  # the end of the line before (or just the newline that ends it)
        position += len(lines.readline()) - 1
    number = 0
    while stop < 0 or position < stop:
        raw = lines.readline()
        if not raw:
            return
        position += len(raw)
        number = count.lines = number + 1
        # Split on "\n" only: str.splitlines() also breaks at U+2028/U+0085 in JSON strings.
        line = raw.decode("utf-8-sig" if number == 1 and start == 0 else "utf-8", "replace")
        if not line.strip():
            continue
        try:
            yield number, json.loads(line), None
        except json.JSONDecodeError as exc:
            yield number, None, f"invalid JSON ({exc.msg} at column {exc.colno})"


class PairFileDatasource(FileBasedDatasource):
    """Reads JSONL, CSV or Parquet files into canonical columns plus file/line/problem tags."""

    def __init__(self, paths: list[str], source: Source, **kwargs: Any) -> None:
        super().__init__(paths, file_extensions=EXTENSIONS[source.format], **kwargs)
        self._format = source.format
        self._mapping = canonical_columns(source.columns)
        self._delimiter = getattr(source, "delimiter", ",")
        self.scheme = "s3://" if source.path.startswith("s3://") else ""  # for reports

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        rows: dict[str, list] = {c: [] for c in [*self._mapping, FILE, LINE, PROBLEM]}
        if self._format == "parquet":  # row groups need random access; Ray hands a stream
            f = pa.BufferReader(f.readall())
        records = read_records(f, self._format, self._delimiter)
        for number, record, problem in records:
            row, problem = (None, problem) if problem else converted(record, self._mapping)
            for canonical in self._mapping:
                rows[canonical].append(row[canonical] if row else None)
            rows[FILE].append(self.scheme + path)
            rows[LINE].append(number)
            rows[PROBLEM].append(problem)
            if len(rows[FILE]) >= BLOCK_ROWS:
                yield _table(rows)
                rows = {c: [] for c in rows}
        if rows[FILE]:
            yield _table(rows)


def _table(rows: dict[str, list]) -> pa.Table:
    types = {LINE: pa.int64(), SCORE: pa.float64(), LABEL: pa.float64()}
    return pa.table({c: pa.array(v, type=types.get(c, pa.string())) for c, v in rows.items()})


def _good_rows(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.is_null(batch[PROBLEM])).drop_columns([FILE, LINE, PROBLEM])


def _bad_rows(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.is_valid(batch[PROBLEM])).select([FILE, LINE, PROBLEM])


@dataclass
class SourceReport:
    """What reading one source found: usable rows, broken rows and the first few of them."""

    name: str
    files: int
    rows: int
    bad_rows: int
    examples: list[dict[str, Any]] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [f"{e[FILE]}:{e[LINE]}: {e[PROBLEM]}" for e in self.examples]


def resolve_paths(path: str) -> list[str]:
    """A local file, folder or glob (``~`` expanded) → absolute paths for Ray Data.

    A file that exists is that file, even when its name has glob characters (``a[1].jsonl``).
    """
    local = Path(path).expanduser()
    if not local.exists() and any(ch in path for ch in "*?["):
        matches = sorted(glob.glob(str(local), recursive=True))
        if not matches:
            raise FileNotFoundError(f"no files match {path}")
        return [str(Path(m).resolve()) for m in matches]
    return [str(local.resolve())]


def local_rows(source: Source) -> Iterator[tuple[dict[str, Any] | None, str | None]]:
    """(canonical row, None) or (None, "file:line: problem") for each row of a local source.

    Without Ray: for estimates and references on the driver; training reads with Ray Data.
    """
    mapping = canonical_columns(source.columns)
    delimiter = getattr(source, "delimiter", ",")
    for path in resolve_paths(source.path):
        for file in format_files(Path(path), source.format):
            for number, record, problem in parse_records(
                file.read_bytes(), source.format, delimiter
            ):
                row, problem = (None, problem) if problem else converted(record, mapping)
                yield row, None if row else f"{file}:{number}: {problem}"


def read_source(
    name: str, source: Source, num_cpus: float = 0.5
) -> tuple[ray.data.Dataset, SourceReport]:
    """One source → (clean dataset of canonical text columns, report), for side stages that
    need the texts (mining); training reads compiled sources (:mod:`orchestrator.data.compile`).
    """
    import ray.data

    if source.path.startswith("s3://"):
        remote = Location(source.path, source.endpoint_url)
        paths, filesystem = expand_remote(remote), arrow_filesystem(source.endpoint_url)
    else:
        paths, filesystem = resolve_paths(source.path), None
    datasource = PairFileDatasource(paths, source, filesystem=filesystem)
    read = ray.data.read_datasource(datasource, num_cpus=num_cpus)
    inputs = sorted(read.input_files())  # known before materializing only
    tagged = read.materialize()
    bad = tagged.map_batches(_bad_rows, batch_format="pyarrow", num_cpus=num_cpus).materialize()
    clean = tagged.map_batches(_good_rows, batch_format="pyarrow", num_cpus=num_cpus)
    bad_rows = bad.count()
    rows = tagged.count() - bad_rows
    if source.max_rows:
        clean, rows = clean.limit(source.max_rows), min(rows, source.max_rows)
    report = SourceReport(
        name=name,
        files=len(inputs),
        rows=rows,
        bad_rows=bad_rows,
        examples=sorted(bad.take(1000), key=lambda e: (e[FILE], e[LINE]))[:REPORTED_EXAMPLES],
    )
    return clean, report


def read_sources(
    data: DataSpec, num_cpus: float = 0.5
) -> tuple[dict[str, ray.data.Dataset], list[SourceReport]]:
    """Every source of the spec, cleaned; raises :class:`BadRowsError` under ``fail``."""
    datasets, reports = {}, []
    for name, source in data.sources.items():
        datasets[name], report = read_source(name, source, num_cpus)
        reports.append(report)
    check_bad_rows(reports, data.on_bad_rows)
    return datasets, reports


def check_bad_rows(reports: list[SourceReport], policy: str) -> None:
    """Raise :class:`BadRowsError` naming each source's first broken row under ``fail``."""
    broken = [r for r in reports if r.bad_rows]
    if broken and policy == "fail":
        lines = [
            f"data.sources.{r.name}: {r.bad_rows} bad row(s), e.g. {r.lines()[0]}" for r in broken
        ]
        raise BadRowsError("broken rows with data.on_bad_rows=fail:\n  " + "\n  ".join(lines))
