"""Matplotlib figures rendered straight to PNG bytes, for reports and search results.

Built without pyplot: nothing global to close or leak, and the caller's backend (a
notebook's inline one, say) is never switched to Agg behind its back.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def new_axes(size: tuple[float, float] = (6, 3), dpi: int = 100) -> tuple[Figure, Axes]:
    """One plot on its own Agg canvas, steps on the x axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_xlabel("step")
    axes.grid(alpha=0.3)
    return figure, axes


def to_png(figure: Figure) -> bytes:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
