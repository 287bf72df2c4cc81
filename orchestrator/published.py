"""What a run publishes names no home folder.

A run's summary, report, model card and spec travel: to a bucket, a model hub, a pull request.
An absolute path such as ``/home/alice/corpora/pairs.jsonl`` names the person and the
machine, so these files say ``~/corpora/pairs.jsonl`` instead, which every path of a spec
and every local storage location accepts (``~`` is expanded wherever a path is read).
"""

from __future__ import annotations

import re
from pathlib import Path


def without_home(text: str, home: str | None = None) -> str:
    """``text`` with this user's home folder written as ``~`` wherever a path starts with it."""
    home = (home or str(Path.home())).rstrip("/")
    if not home:  # "/" as home: nothing to hide
        return text
    return re.sub(rf"(?<![\w.~-]){re.escape(home)}(?![\w.-])", "~", text)
