"""Canonical columns and the four row formats: what a row of training or held-out data holds."""

from __future__ import annotations

from pydantic import Field, model_validator

from orchestrator.spec.base import Section

#: Canonical column names every source is mapped onto.
ANCHOR, POSITIVE, SCORE, LABEL = "anchor", "positive", "score", "label"

#: The four shapes of training data, named by what a row holds besides (anchor, positive):
#: nothing, hard-negative texts, a similarity score, or a 0/1 label.
PAIRS, TRIPLETS, SCORED_PAIRS, LABELED_PAIRS = "pairs", "triplets", "scored_pairs", "labeled_pairs"


#: What each row format asks of a column map.
_FORMAT_COLUMNS = {
    PAIRS: "columns anchor, positive",
    TRIPLETS: "columns.negatives",
    SCORED_PAIRS: "columns.score",
    LABELED_PAIRS: "columns.label",
}


class ColumnMap(Section):
    """Maps canonical columns onto a file's own column names; which are set gives the format.

    pairs: anchor + positive. triplets: + ``negatives``. scored pairs: + ``score`` (a number;
    ``positive`` is then simply the second text). labeled pairs: + ``label`` (1 similar, 0 not).
    """

    anchor: str = Field(default=ANCHOR, description="The anchor (query), or the first text.")
    positive: str = Field(default=POSITIVE, description="The positive, or the second text.")
    negatives: list[str] = Field(
        default_factory=list, description="Zero or more hard-negative columns, in order."
    )
    score: str | None = Field(default=None, description="Similarity score column (scored pairs).")
    label: str | None = Field(default=None, description="0/1 label column (labeled pairs).")

    @model_validator(mode="after")
    def _one_format(self) -> ColumnMap:
        extras = [k for k in ("negatives", "score", "label") if getattr(self, k)]
        if len(extras) > 1:
            raise ValueError(
                f"a row is pairs + one of negatives, score or label; this map sets {extras}"
            )
        named = [self.anchor, self.positive, *self.negatives, self.score, self.label]
        named = [n for n in named if n is not None]
        if any(not n.strip() for n in named):
            raise ValueError("a column name is empty")
        if repeated := sorted({n for n in named if named.count(n) > 1}):
            raise ValueError(f"each column once: {repeated} is mapped twice")
        return self

    @property
    def format(self) -> str:
        """pairs, triplets, scored_pairs or labeled_pairs."""
        if self.negatives:
            return TRIPLETS
        return SCORED_PAIRS if self.score else LABELED_PAIRS if self.label else PAIRS

    def mismatch(self, formats: tuple[str, ...]) -> str | None:
        """``triplets (columns.negatives); these columns make pairs``, or None if they fit."""
        if self.format in formats:
            return None
        wanted = " or ".join(f"{f} ({_FORMAT_COLUMNS[f]})" for f in formats)
        return f"{wanted}; these columns make {self.format}"
