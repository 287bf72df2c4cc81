"""The product's one promise, checked on every CI run: the quickstart really gets better.

A real run of ``experiments/quickstart.yaml`` (all-MiniLM-L6-v2 on SQuAD, the offline assets
``make prepare`` fetches) on a local Ray instance. It fails when the held-out gain falls below
a floor set from measured runs (bench/RESULTS.md, "Quality"), when the gain is not beyond the
noise of the test set, or when the guard set says the model forgot. A change that keeps every
other test green but costs the quickstart its gain (the data order once did) fails here.

``QUALITY_OVERRIDES="train.lr=1e-7"`` (space-separated ``key=value``) runs it on a changed
recipe: the way to check that it fails when the gain is lost.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# A real fine-tuning run: 462 s in session 13's suite, over 600 s (the suite's hang guard) on
# the same 2-core VM when it runs slower; a hang still ends it.
pytestmark = [pytest.mark.quality, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "experiments" / "quickstart.yaml"
#: Six data orders of the quickstart's recipe (LoRA with a same-article hard negative, merged
#: at alpha 0.5; three seeds on the compiled corpus, three on the data path before it) gained
#: +0.0161 to +0.0234 NDCG@10 on the test split, each interval about ±0.0062, sd 0.0034 over
#: seeds (bench/quality.py --seeds, in bench/RESULTS.md); this test's seed gives +0.0161. Any
#: change of the data order draws anew from that spread, so the floor sits one sd below its
#: lowest figure; the data-order bug left +0.0002, lr 1e-7 +0.0003. Below it something was lost.
MIN_GAIN = 0.012


def test_the_quickstart_improves_beyond_noise_and_keeps_general_ability(tmp_path, monkeypatch):
    from orchestrator import run
    from orchestrator.spec import load_spec

    if not (ROOT / "data" / "squad" / "prepared.json").is_file():
        pytest.fail("the quickstart's data is missing: run `make prepare` (make test does)")
    monkeypatch.chdir(ROOT)  # the spec's data paths are relative to the repository
    overrides = os.environ.get("QUALITY_OVERRIDES", "").split()
    spec = load_spec(QUICKSTART, [*overrides, f"storage.uri={tmp_path / 'runs'}"])
    result = run(spec)

    judged = result.summary.verdict
    low, _ = judged.interval
    assert judged.delta >= MIN_GAIN, f"gain {judged.delta:+.4f} < floor {MIN_GAIN}"
    assert judged.outcome == "improved" and low > 0, judged
    assert not judged.guard.forgot, judged.guard
    assert not result.summary.rejected and result.model_dir.name == "model"
