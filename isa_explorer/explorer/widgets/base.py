"""What the notebook views share: a figure (live under ipympl), controls, a PNG snapshot."""

from __future__ import annotations

import contextlib
import io
from typing import Any

from matplotlib.figure import Figure

LIVE_DPI = 80  # the live canvas's resolution: five panels fit a notebook's width
# ipympl draws its toolbar over the canvas (a floating column of 34 px buttons, 3 px from the
# left edge, shown while the pointer is on the figure): the axes are laid out right of it.
TOOLBAR_STRIP_PX = 44


def _widgets():
    import ipywidgets  # the notebooks extra; imported only when controls are built

    return ipywidgets


def in_kernel() -> bool:
    """Whether this runs in a Jupyter kernel with ipympl available (live canvases)."""
    try:
        import ipympl  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    return hasattr(get_ipython(), "kernel")  # None outside IPython


def new_figure(nrows: int, ncols: int, figsize: tuple[float, float]) -> tuple[Figure, Any]:
    """A figure and its axes, outside pyplot's figure list.

    In a kernel with ipympl it gets ipympl's live canvas without switching the notebook's
    backend (its other figures stay inline PNGs, and a backend switch cannot close this one);
    elsewhere matplotlib's plain canvas, where callbacks and snapshots still work.
    """
    fig = Figure(figsize=figsize, dpi=LIVE_DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols)
    if in_kernel():
        from ipympl.backend_nbagg import Canvas, FigureManager

        canvas = Canvas(fig)
        FigureManager(canvas, id(fig))
        canvas.header_visible = False  # no "Figure <number>" line
        canvas.toolbar_position = "left"  # over the strip that keep_toolbar_strip leaves free
        keep_toolbar_strip(fig)
        canvas.mpl_connect("resize_event", lambda _event: keep_toolbar_strip(fig))
    return fig, axes


def keep_toolbar_strip(fig: Figure) -> None:
    """Leave the canvas's left ``TOOLBAR_STRIP_PX`` pixels to ipympl's toolbar, which floats
    over the first panel's left edge while the pointer is on the figure (call again on resize:
    the strip is in screen pixels)."""
    left = min(TOOLBAR_STRIP_PX / (fig.get_figwidth() * LIVE_DPI), 0.25)
    fig.get_layout_engine().set(rect=(left, 0.0, 1.0 - left, 1.0))


def snapshot_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (the static copy a notebook keeps in its output)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


class _View:
    """What the views share: a figure, controls, a box of both, a PNG snapshot."""

    fig: Figure
    controls: list
    _syncing: bool = False

    @contextlib.contextmanager
    def _quiet(self):
        """Set controls from code without their callbacks running again."""
        self._syncing = True
        try:
            yield
        finally:
            self._syncing = False

    def widget(self) -> Any:
        """Controls above the figure: its live canvas under ipympl, else a PNG of it."""
        w = _widgets()
        canvas = self.fig.canvas
        if not isinstance(canvas, w.DOMWidget):  # no live canvas: a picture of the figure
            canvas = w.Image(value=snapshot_png(self.fig), format="png")
        return w.VBox([w.HBox(self.controls[:3]), w.HBox(self.controls[3:]), canvas])

    def snapshot(self) -> Any:
        """The current state as an ``IPython.display.Image``."""
        from IPython.display import Image

        return Image(snapshot_png(self.fig))
