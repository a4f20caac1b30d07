"""The app's Compare tab and ``/compare`` endpoint: one image, two to four heads, one click.

Layout only; the work is :class:`~isa_explorer.explorer.compare.Comparison`'s and the drawing
:mod:`~isa_explorer.explorer.compare_panels`'. Loading an image runs every chosen model once
and answers a click at its centre at once; the forward-pass costs and then the whole-image
means follow in the same request, each shown when ready, while clicks keep answering.
"""

from __future__ import annotations

import time

import gradio as gr

from isa_explorer.explorer import compare_panels as panels
from isa_explorer.explorer.api import compare_summary
from isa_explorer.explorer.compare import (
    AVERAGE_BUDGET_S,
    MAX_HEADS,
    MIN_HEADS,
    Comparison,
)
from isa_explorer.explorer.compare_state import CompareClick
from isa_explorer.explorer.service import CONTEXTS, NUM_EXAMPLES, ExplorerError
from isa_explorer.explorer.ui import api_guard, guard, session_key
from isa_explorer.explorer.uploads import FORMAT_NAMES

_INTRO = f"""Choose {MIN_HEADS} to {MAX_HEADS} heads, load an image, click a pixel. Each column is
one head: its **final map** (where the query's output draws from) on one colour scale shared by
all heads, its prediction, the statistics of the final map at the query and over the whole
image, its forward pass's cost on this image, then its step maps, each on its own scale. The
embedded default models share one encoder, so their columns differ by their heads alone."""
#: Display format of the tab's images (as the Explore tab's: JPEG encodes fast).
_FORMAT = "jpeg"


def compare_key(request: gr.Request | None) -> str:
    """The session's key for its compared image (beside its Explore tab image)."""
    return "compare:" + session_key(request)


def build_compare_tab(comparison: Comparison) -> None:
    """Lay out the Compare tab's components and callbacks (inside a ``gr.Tab``)."""
    cmp = comparison
    synthetic = any(cmp.explorers[n].model.is_synthetic for n in cmp.names)
    gr.Markdown(_INTRO)
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            choice = gr.CheckboxGroup(
                cmp.names,
                value=cmp.default_choice(),
                label=f"Heads ({MIN_HEADS} to {MAX_HEADS}; the default models by head name)",
                elem_id="compare-heads",
            )
            with gr.Group(visible=synthetic):
                index = gr.Slider(0, NUM_EXAMPLES - 1, 3, step=1, label="Example scene")
                context = gr.Radio(list(CONTEXTS), value="as drawn", label="Cue colour")
                load = gr.Button("Load example", variant="primary", elem_id="compare-load")
            upload = gr.File(
                label=f"...or upload an image ({FORMAT_NAMES})",
                file_types=["image"],
                type="filepath",
                elem_id="compare-upload",
            )
            status = gr.Markdown("Pick an example or upload an image.", elem_id="compare-status")
            save = gr.Button("Download maps and statistics (.npz + .json)", elem_id="compare-save")
            files = gr.File(label="Download", file_count="multiple", elem_id="compare-files")
        with gr.Column(scale=2):
            image = gr.Image(
                label="Image (click a pixel; or click any final map)",
                interactive=False,
                format=_FORMAT,
                elem_id="compare-image",
            )
            scale_bar = gr.HTML(elem_id="compare-scale-bar")
    slots = []
    with gr.Row(equal_height=False):
        for i in range(MAX_HEADS):
            with gr.Column(visible=False, min_width=220) as col:
                title = gr.Markdown(elem_id=f"compare-title-{i}")
                final = gr.Image(
                    label="final map (shared scale)",
                    interactive=False,
                    format=_FORMAT,
                    elem_id=f"compare-final-{i}",
                )
                pred = gr.Image(
                    label="prediction",
                    interactive=False,
                    format=_FORMAT,
                    elem_id=f"compare-pred-{i}",
                )
                stats = gr.Markdown(elem_id=f"compare-stats-{i}")
                steps = gr.Gallery(
                    label="its maps (own scales) and values",
                    columns=2,
                    object_fit="contain",
                    format=_FORMAT,
                    elem_id=f"compare-steps-{i}",
                )
            slots.append((col, title, final, pred, stats, steps))
    outputs = [image, scale_bar, status, *[c for slot in slots for c in slot]]
    n_out = len(outputs)

    def shown(click: CompareClick, note: str | None) -> tuple:
        """Every output for a click (``note``: the status line, ``None`` keeps it)."""
        out = []
        for i in range(MAX_HEADS):
            if i >= len(click.heads):
                out += [gr.Column(visible=False), *[gr.skip()] * 5]
                continue
            col = panels.column(cmp, click, click.heads[i])
            keys = ("title", "final", "prediction", "statistics", "steps")
            out += [gr.Column(visible=True), *(col[k] for k in keys)]
        return (
            panels.query_image(click.state),
            panels.colour_bar_html(click),
            gr.skip() if note is None else note,
            *out,
        )

    def again(key: str, note: str | None) -> tuple:
        state = cmp.state(key)
        h, w = state.size
        x, y = state.query or (w // 2, h // 2)
        return shown(cmp.click(key, x, y), note)

    def timed(fn, *args) -> tuple:
        """An analysis (``fn``) and the first click's outputs, its time said."""
        start = time.perf_counter()
        state = fn(*args)
        note = (
            f"Analysed {state.source} ({state.size[1]}x{state.size[0]} px) with "
            f"{len(state.chosen)} heads in {time.perf_counter() - start:.1f} s."
        )
        return again(args[0], note)

    @guard(n_out, status_index=2)
    def on_example(names, i, ctx, request: gr.Request):
        return timed(cmp.load_example, compare_key(request), int(i), ctx, names)

    @guard(n_out, status_index=2)
    def on_upload(path, names, request: gr.Request):
        if path is None:
            return tuple([gr.skip()] * n_out)
        return timed(cmp.load_file, compare_key(request), path, names)

    @guard(n_out, status_index=2)
    def on_choice(names, request: gr.Request):
        key = compare_key(request)
        if cmp.store.get(key) is None:  # no image yet: only the choice is checked
            cmp.check_names(names)
            return tuple([gr.skip()] * n_out)
        return timed(cmp.choose, key, names)

    @guard(n_out, status_index=2)
    def on_follow(request: gr.Request):
        """After an analysis: the costs, then the image means, each shown when ready (its own
        event: clicks and new choices are answered meanwhile)."""
        key = compare_key(request)
        state = cmp.store.get(key)
        if state is None or not state.pending:  # (or the analysis failed: its message stays)
            yield tuple([gr.skip()] * n_out)
            return
        yield again(key, "Measuring each head's forward pass on this image...")
        cmp.measure_costs(key)
        yield again(
            key, f"Costs measured; the image means (up to {AVERAGE_BUDGET_S:g} s a head)..."
        )
        cmp.image_averages(key)
        yield again(key, f"Costs and image means ready: {cmp.state(key).source}.")

    @guard(n_out, status_index=2)
    def on_select(evt: gr.SelectData, request: gr.Request):
        if evt is None or evt.index is None or len(evt.index) != 2:
            raise ExplorerError("click on a pixel of the image")
        key = compare_key(request)
        x, y = panels.display(cmp.state(key)).to_image(*evt.index)
        return shown(cmp.click(key, x, y), f"Query pixel ({x}, {y}).")

    @guard(2, status_index=1)
    def on_save(request: gr.Request):
        key = compare_key(request)
        state = cmp.state(key)
        if state.query is None:
            raise ExplorerError("click a pixel first")
        click = cmp.click(key, *state.query)
        return panels.download(cmp, click), f"Saved the maps and statistics of pixel {click.query}."

    vis = dict(api_visibility="private")
    # The slow steps run as their own event, one at a time per server (a 2-core CPU).
    slow = dict(concurrency_id="compare-slow", concurrency_limit=1, **vis)
    load.click(on_example, [choice, index, context], outputs, **vis).then(
        on_follow, None, outputs, **slow
    )
    upload.upload(on_upload, [upload, choice], outputs, **vis).then(
        on_follow, None, outputs, **slow
    )
    choice.input(on_choice, [choice], outputs, trigger_mode="always_last", **vis).then(
        on_follow, None, outputs, **slow
    )
    for target in (image, *(slot[2] for slot in slots), *(slot[3] for slot in slots)):
        target.select(on_select, None, outputs, **vis)
    save.click(on_save, None, [files, status], **vis)


def compare_api(comparison: Comparison) -> None:
    """Hidden components behind the ``/compare`` endpoint (parameters by keyword: ``image``,
    ``x``, ``y``, ``heads``, ``image_means``, ``costs``)."""
    with gr.Row(visible=False):
        image_in = gr.File(type="filepath", label="image")
        x_in, y_in = gr.Number(label="x (pixel column)"), gr.Number(label="y (pixel row)")
        heads_in = gr.JSON(label="heads")
        means_in = gr.Checkbox(False, label="image_means")
        costs_in = gr.Checkbox(False, label="costs")
        out = gr.JSON(label="comparison")
        button = gr.Button("compare")

    @api_guard
    def compare(image, x, y, heads, image_means, costs):
        """Every chosen head's maps and statistics at pixel (x, y) of an image file."""
        return compare_summary(comparison, image, x, y, heads, bool(image_means), bool(costs))

    inputs = [image_in, x_in, y_in, heads_in, means_in, costs_in]
    button.click(compare, inputs, [out], api_name="compare")
