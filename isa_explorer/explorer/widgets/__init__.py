"""Interactive views for the notebooks: JupyterLab's own widgets, no web server.

In a Jupyter kernel each view's figure is an ipympl canvas: clicks on it reach
:meth:`AttentionView.select`; ``ipywidgets`` controls redraw the views. Outside a kernel the
same callbacks are plain methods (the tests call them), and :meth:`snapshot` gives a PNG, so a
notebook read without a kernel (on GitHub, as HTML) still shows the maps.

* :class:`AttentionView` (notebook 3): the prediction and the maps the model's head declares
  of the clicked pixel, from cached queries and keys (the app's
  :class:`~isa_explorer.explorer.service.Explorer`: no forward pass per click); optionally the
  same pixel under a second model side by side.
* :class:`GroupingView` (notebook 1): the interlaced grouping of a map, a position's long-range
  group and short-range block, and the support of ``C = S @ L``.
* :class:`CostView` (notebook 2): analytic memory and FLOPs against resolution, channels and
  group size, with the committed measurements.
* :class:`CompareView` (notebook 7): two to four models on one image, one click: each head's
  final map on one shared log colour scale, its prediction and its map's statistics (the
  app's :class:`~isa_explorer.explorer.compare.Comparison`: no forward pass per click).
"""

from isa_explorer.explorer.widgets.attention_view import AttentionView, cached_zoo_models
from isa_explorer.explorer.widgets.base import in_kernel, new_figure, snapshot_png
from isa_explorer.explorer.widgets.compare_view import CompareView
from isa_explorer.explorer.widgets.cost_view import CostView
from isa_explorer.explorer.widgets.grouping_view import GroupingView

__all__ = [
    "AttentionView",
    "CompareView",
    "CostView",
    "GroupingView",
    "cached_zoo_models",
    "in_kernel",
    "new_figure",
    "snapshot_png",
]
