"""Which local files a source path means: light, so that ``validate`` can ask on a laptop."""

from __future__ import annotations

from pathlib import Path

#: File extensions each format reads from a folder, as Ray Data's readers take them.
EXTENSIONS = {"jsonl": ["jsonl", "json"], "parquet": ["parquet"], "csv": ["csv", "tsv"]}


def format_files(path: Path, fmt: str) -> list[Path]:
    """A file, or a folder's files with the format's extensions."""
    if not path.is_dir():
        return [path]
    extensions = EXTENSIONS[fmt]
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix[1:] in extensions)
