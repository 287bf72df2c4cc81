"""Hard-negative mining: pair corpora → rows with ``negative_1..k`` retrieved by the encoder.

The recipe is the one of BGE, Jina and sentence-transformers' ``mine_hard_negatives``: embed
anchors and the corpus of positives, retrieve the top candidates of every anchor, drop the
anchor's known positives and every candidate that scores too close to the positive (likely an
unlabelled positive, a *false* negative), keep the hardest ``k`` that survive. The margin
rules are the ones of ``sentence_transformers.util.mine_hard_negatives``.

The project has its own stage rather than calling that function because it

* reads the spec's sources with the project's reader (:mod:`orchestrator.data.sources`), which
  reports broken rows and honours ``data.on_bad_rows`` and ``max_rows`` like training does;
* embeds through Ray Data batch inference (an actor holding the encoder built by
  :func:`orchestrator.modeling.load_encoder`, so prompts and pooling are the spec's), which
  moves to a GPU or a larger cluster unchanged;
* never pads a row with random negatives: an anchor with fewer than ``k`` survivors is
  dropped and counted;
* writes provenance next to the mined file: model, source, spec, settings and every count.
"""

from orchestrator.mining.embedding import embed, retrieve
from orchestrator.mining.stage import (
    Candidates,
    MiningConfig,
    MiningCounts,
    MiningReport,
    Pairs,
    Selection,
    known_positive_keys,
    margin_mask,
    mine,
    mined_rows,
    read_pairs,
    select_negatives,
    unique_index,
)

__all__ = [
    "Candidates",
    "MiningConfig",
    "MiningCounts",
    "MiningReport",
    "Pairs",
    "Selection",
    "embed",
    "known_positive_keys",
    "margin_mask",
    "mine",
    "mined_rows",
    "read_pairs",
    "retrieve",
    "select_negatives",
    "unique_index",
]
