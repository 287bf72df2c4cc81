"""Compile a pair source once: its files → cleaned, tokenized Parquet fragments + a manifest.

One Ray Data job per source streams its files in chunks (byte ranges of a JSONL file, runs of
a Parquet file's row groups, a CSV file whole but streamed), cleans every row as
:mod:`orchestrator.data.sources` does (broken rows counted and reported with file:line),
tokenizes it and writes fragments of at most :data:`FRAGMENT_ROWS` rows of token ids. The
manifest lists the fragments in file order with their rows, tokens and sha256, plus the row
report; it is written last, so a folder with a manifest is a finished compile.

The folder is keyed by everything the token ids depend on: the files (name, size, mtime),
the column mapping and format, the tokenizer's files, ``max_seq_length``, the prompts and
this module's cleaning version. Reruns, resumes, a search's trials and other specs with the
same key read it instead of compiling again. Training then reads only fragments
(:mod:`orchestrator.data.feed`): nothing of the corpus is pinned in the object store.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from orchestrator.assets import transformer_folder
from orchestrator.data.files import format_files
from orchestrator.data.sources import (
    FILE,
    LINE,
    PROBLEM,
    REPORTED_EXAMPLES,
    LineCount,
    SourceReport,
    canonical_columns,
    check_bad_rows,
    converted,
    read_records,
    resolve_paths,
)
from orchestrator.data.tokenize import IDS_SUFFIX, tokenize_batch
from orchestrator.layout import COMPILED_DIR
from orchestrator.spec import LABEL, SCORE
from orchestrator.storage import (
    Location,
    arrow_filesystem,
    expand_remote,
    read_text,
    write_bytes,
)

if TYPE_CHECKING:
    from orchestrator.spec import ExperimentSpec, Source

log = logging.getLogger("orchestrator")

#: Bump when cleaning or the fragment layout changes: older compiles are then not reused.
COMPILE_VERSION = 1
#: Rows per fragment: the unit an epoch plan permutes and hands to ranks, so small enough that
#: a shuffle window holds many of them (rows from all over the source), large enough that a
#: corpus of a billion pairs is a million files, not more.
FRAGMENT_ROWS = 1024
#: Bytes of a JSONL file per read task, Parquet rows per read task.
CHUNK_BYTES = 8 << 20
CHUNK_ROWS = 65536
MANIFEST_FILE = "manifest.json"
#: Files of a model folder that are not the tokenizer's (weights): left out of the key.
_WEIGHTS = {".safetensors", ".bin", ".pt", ".pth", ".onnx", ".h5", ".msgpack", ".ckpt"}


@dataclass(frozen=True)
class Chunk:
    """One read task's share of a source's files."""

    index: int  # among the source's chunks, in file order
    file: str  # as the file system opens it (an absolute path, or bucket/key)
    shown: str  # as reports name it (s3:// for objects)
    start: int  # JSONL: first byte; Parquet: first row group; CSV: 0
    stop: int  # JSONL: byte after the range; Parquet: row group after it; CSV: -1
    first_row: int = 0  # Parquet: rows of the file's row groups before ``start``


@dataclass(frozen=True)
class CompiledSource:
    """A compiled source: where its fragments are, its manifest and its row report."""

    name: str
    location: Location
    manifest: dict[str, Any]
    report: SourceReport
    reused: bool


def _filesystem(endpoint_url: str | None):
    from pyarrow import fs

    return arrow_filesystem(endpoint_url) if endpoint_url is not None else fs.LocalFileSystem()


def _remote(source: Source) -> bool:
    return source.path.startswith("s3://")


def source_files(source: Source) -> list[tuple[str, str, int, int]]:
    """(path as opened, name in reports, size, mtime in ns) of each file, sorted."""
    from pyarrow import fs

    if _remote(source):
        paths = expand_remote(Location(source.path, source.endpoint_url))
        filesystem, shown = arrow_filesystem(source.endpoint_url), "s3://"
    else:
        paths = [
            str(file)
            for path in resolve_paths(source.path)
            for file in format_files(Path(path), source.format)
        ]
        filesystem, shown = fs.LocalFileSystem(), ""
    infos = filesystem.get_file_info(sorted(paths))
    missing = [i.path for i in infos if i.type != fs.FileType.File]
    if missing:
        raise FileNotFoundError(f"not a file: {shown}{missing[0]}")
    return [(i.path, shown + i.path, i.size, i.mtime_ns or 0) for i in infos]


def tokenizer_fingerprint(model_path: str) -> str:
    """sha256 over the tokenizer's files (every file of the model's folder but weights)."""
    folder = Path(transformer_folder(model_path))
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix not in _WEIGHTS):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def compile_key(
    spec: ExperimentSpec, source: Source, files: list[tuple[str, str, int, int]], model_path: str
) -> str:
    """What the token ids depend on, hashed: the compiled folder's name."""
    described = {
        "version": COMPILE_VERSION,
        "fragment_rows": FRAGMENT_ROWS,
        "format": source.format,
        "delimiter": getattr(source, "delimiter", ","),
        "columns": canonical_columns(source.columns),
        "files": [[shown, size, mtime] for _, shown, size, mtime in files],
        "tokenizer": tokenizer_fingerprint(model_path),
        "max_seq_length": spec.model.max_seq_length,
        "prompts": prompts_of(spec),
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def prompts_of(spec: ExperimentSpec) -> dict[str, str]:
    return {"anchor": spec.model.query_prompt, "*": spec.model.passage_prompt}


def plan_chunks(source: Source, files: list[tuple[str, str, int, int]]) -> list[Chunk]:
    """The read tasks of a source: no task holds more than a chunk of one file."""
    chunks: list[Chunk] = []
    filesystem = _filesystem(source.endpoint_url if _remote(source) else None)
    for path, shown, size, _ in files:
        if source.format == "jsonl":
            ranges = [(a, min(a + CHUNK_BYTES, size)) for a in range(0, max(size, 1), CHUNK_BYTES)]
            chunks += [Chunk(len(chunks) + i, path, shown, a, b) for i, (a, b) in enumerate(ranges)]
        elif source.format == "parquet":
            with filesystem.open_input_file(path) as f:
                groups = [g.num_rows for g in _row_groups(pq.ParquetFile(f).metadata)]
            start, first_row, rows = 0, 0, 0
            for group, group_rows in enumerate(groups):
                rows += group_rows
                if rows >= CHUNK_ROWS or group == len(groups) - 1:
                    chunks.append(Chunk(len(chunks), path, shown, start, group + 1, first_row))
                    start, first_row, rows = group + 1, first_row + rows, 0
        else:
            chunks.append(Chunk(len(chunks), path, shown, 0, -1))
    return chunks


def _row_groups(metadata: pq.FileMetaData) -> list[pq.RowGroupMetaData]:
    return [metadata.row_group(i) for i in range(metadata.num_row_groups)]


def compiled_location(spec: ExperimentSpec, key: str) -> Location:
    """Beside the runs: ``<storage.uri>/_compiled/<key>``, shared by every spec there."""
    return Location.of(spec.storage).join(COMPILED_DIR, key[:32])


def read_manifest(location: Location) -> dict[str, Any] | None:
    """A finished compile's manifest; None if there is none (or a torn one)."""
    try:
        manifest = json.loads(read_text(location.join(MANIFEST_FILE)))
    except FileNotFoundError:
        return None
    except ValueError:
        log.warning("%s is torn: compiling again", location.join(MANIFEST_FILE).uri)
        return None
    return manifest if manifest.get("version") == COMPILE_VERSION else None


class _FragmentWriter:
    """Cleaned rows → tokenized fragments of at most FRAGMENT_ROWS rows, each written once."""

    def __init__(self, folder: Location, chunk: int, mapping: dict[str, str], **tokenizing):
        self.folder, self.chunk, self.tokenizing = folder, chunk, tokenizing
        self.columns = list(mapping)
        self.pending: dict[str, list] = {c: [] for c in self.columns}
        self.fragments: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        for column in self.columns:
            self.pending[column].append(row[column])
        if len(self.pending[self.columns[0]]) == FRAGMENT_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.pending[self.columns[0]]:
            return
        types = {SCORE: pa.float64(), LABEL: pa.float64()}
        table = pa.table(
            {c: pa.array(v, type=types.get(c, pa.string())) for c, v in self.pending.items()}
        )
        ids = tokenize_batch(table, **self.tokenizing)
        buffer = io.BytesIO()
        pq.write_table(ids, buffer, compression="zstd")
        data = buffer.getvalue()
        name = f"fragments/{self.chunk:06d}-{len(self.fragments):04d}.parquet"
        write_bytes(self.folder.join(name), data)
        tokens = sum(
            int(pc.sum(pc.list_value_length(ids[c])).as_py() or 0)
            for c in ids.column_names
            if c.endswith(IDS_SUFFIX)
        )
        self.fragments.append(
            {
                "path": name,
                "rows": ids.num_rows,
                "tokens": tokens,
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
        self.pending = {c: [] for c in self.columns}


def compile_chunk(
    item: dict[str, Any], *, source: dict[str, Any], folder: Location, tokenizing: dict[str, Any]
) -> dict[str, Any]:
    """One read task: a chunk's rows cleaned, tokenized and written; what it found, as JSON."""
    chunk = Chunk(**{k: item[k] for k in Chunk.__dataclass_fields__})
    mapping = source["mapping"]
    writer = _FragmentWriter(folder, chunk.index, mapping, **tokenizing)
    bad, examples, count = 0, [], LineCount()
    with _filesystem(source["endpoint_url"]).open_input_file(chunk.file) as f:
        records = read_records(
            f, source["format"], source["delimiter"], chunk.start, chunk.stop, count
        )
        for number, record, problem in records:
            row, problem = (None, problem) if problem else converted(record, mapping)
            if row is not None:
                writer.add(row)
                continue
            bad += 1
            if len(examples) < REPORTED_EXAMPLES:
                examples.append([chunk.first_row + number, problem])
    writer.flush()
    outcome = {"fragments": writer.fragments, "bad_rows": bad, "examples": examples}
    return {"index": chunk.index, "lines": count.lines, "outcome": json.dumps(outcome)}


def _run_job(
    spec: ExperimentSpec, source: Source, chunks: list[Chunk], folder: Location, model_path: str
) -> list[dict[str, Any]]:
    """The Ray Data job: one task per chunk; the chunks' outcomes in chunk order."""
    import ray.data

    described = {
        "mapping": canonical_columns(source.columns),
        "format": source.format,
        "delimiter": getattr(source, "delimiter", ","),
        "endpoint_url": source.endpoint_url if _remote(source) else None,
    }
    tokenizing = {
        "model_path": model_path,
        "max_length": spec.model.max_seq_length,
        "prompts": prompts_of(spec),
    }
    items = ray.data.from_items([asdict(c) for c in chunks], override_num_blocks=len(chunks))
    done = items.map(
        compile_chunk,
        fn_kwargs={"source": described, "folder": folder, "tokenizing": tokenizing},
        num_cpus=spec.scaling.cpus_per_data_task,
    ).take_all()
    return sorted(done, key=lambda r: r["index"])


def build_manifest(
    key: str, chunks: list[Chunk], results: list[dict[str, Any]], seconds: float
) -> dict[str, Any]:
    """Fragments in file order, rows and tokens, and the bad rows' first examples with the
    line numbers of their files (a JSONL range's lines follow the ranges before it)."""
    fragments, examples, bad, lines_before = [], [], 0, {}
    for chunk, result in zip(chunks, results, strict=True):
        outcome = json.loads(result["outcome"])
        offset = lines_before.get(chunk.file, 0)
        lines_before[chunk.file] = offset + result["lines"]
        fragments += outcome["fragments"]
        bad += outcome["bad_rows"]
        examples += [
            {FILE: chunk.shown, LINE: offset + line, PROBLEM: problem}
            for line, problem in outcome["examples"]
        ]
    return {
        "version": COMPILE_VERSION,
        "key": key,
        "files": len({c.file for c in chunks}),
        "rows": sum(f["rows"] for f in fragments),
        "tokens": sum(f["tokens"] for f in fragments),
        "bad_rows": bad,
        "examples": examples[:REPORTED_EXAMPLES],
        "fragments": fragments,
        "compile_s": round(seconds, 3),
    }


def find_compiled(spec: ExperimentSpec, source: Source, model_path: str) -> dict[str, Any] | None:
    """The manifest of ``source`` if it is compiled already (for estimates: no Ray, no job)."""
    files = source_files(source)
    return read_manifest(compiled_location(spec, compile_key(spec, source, files, model_path)))


def compile_source(
    spec: ExperimentSpec, name: str, source: Source, model_path: str
) -> CompiledSource:
    """The source's compiled folder: reused when its key exists, else compiled now."""
    files = source_files(source)
    key = compile_key(spec, source, files, model_path)
    folder = compiled_location(spec, key)
    manifest = read_manifest(folder)
    reused = manifest is not None and manifest["key"] == key
    if not reused:
        t0 = time.time()
        chunks = plan_chunks(source, files)
        results = _run_job(spec, source, chunks, folder, model_path)
        manifest = build_manifest(key, chunks, results, time.time() - t0)
        write_bytes(folder.join(MANIFEST_FILE), json.dumps(manifest, indent=1).encode())
    rows = manifest["rows"] if source.max_rows is None else min(manifest["rows"], source.max_rows)
    report = SourceReport(name, manifest["files"], rows, manifest["bad_rows"], manifest["examples"])
    return CompiledSource(name, folder, manifest, report, reused)


@dataclass
class CompiledData:
    """Every source of a spec, compiled (or found compiled), and how long that took."""

    sources: dict[str, CompiledSource]
    seconds: float

    @property
    def reports(self) -> list[SourceReport]:
        return [s.report for s in self.sources.values()]

    @property
    def rows(self) -> dict[str, int]:
        return {name: s.report.rows for name, s in self.sources.items()}


def compile_sources(spec: ExperimentSpec, model_path: str) -> CompiledData:
    """Every source of ``spec``; raises ``BadRowsError`` under ``on_bad_rows: fail``."""
    t0 = time.time()
    compiled = {
        name: compile_source(spec, name, source, model_path)
        for name, source in spec.data.sources.items()
    }
    for s in compiled.values():
        how = "reused" if s.reused else f"compiled in {s.manifest['compile_s']:.1f} s"
        log.info(
            "source %s: %d rows, %d bad, %d fragments (%s: %s)",
            s.name,
            s.report.rows,
            s.report.bad_rows,
            len(s.manifest["fragments"]),
            how,
            s.location.uri,
        )
        for line in s.report.lines():
            log.warning("  bad row %s", line)
    check_bad_rows([s.report for s in compiled.values()], spec.data.on_bad_rows)
    return CompiledData(compiled, time.time() - t0)
