"""The driver (``orchestrator run``/``tune`` on a laptop or a head node) stays light."""

from __future__ import annotations

import subprocess
import sys

MODEL_STACK = {"transformers", "sentence_transformers", "peft"}


def test_the_driver_does_not_import_the_model_stack():
    """The training recipe's imports (seconds of them) happen in the workers that train."""
    code = (
        "import sys\n"
        "import orchestrator.__main__, orchestrator.runner, orchestrator.tuning\n"
        f"print(sorted({MODEL_STACK!r} & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
