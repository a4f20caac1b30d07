"""ISA Explorer: click a pixel, see where Interlaced Sparse Self-Attention looks.

Run ``isa-explorer app`` or ``python app.py`` (the embedded default model), or add
``--checkpoint MODEL`` (a ``train/fit.py`` run, a converted mmseg model, or a zoo name such as
``cityscapes-r50``, downloaded and converted on first use); open http://127.0.0.1:7860
(``--host``, ``--port``, ``--share``: off by default). This module only lays out the Gradio UI;
the logic lives in the rest of :mod:`isa_explorer.explorer`.

Limits: uploads up to ``MAX_FILE_SIZE``; images need sides of at least 32 px and are resized
down to a longest side of 2048 px; the analysed images of at most ``--max-sessions`` sessions
(``--max-cache-mb`` MiB in all) are kept, least recently used first out.

API (gradio_client; parameters by keyword or in this order): ``/predict`` ``(image) ->
(overlay, json)`` and ``/attention`` ``(image, x, y) -> json``, where ``x`` is the pixel column
and ``y`` the row, whole numbers (``3.5`` is refused, not rounded); ``/compare`` ``(image, x, y,
heads, image_means) -> json`` compares 2 to 4 heads at one pixel
(:func:`~isa_explorer.explorer.api.compare_summary`). Every size in the JSON is
``{"width": W, "height": H}`` (``size``; ``image_size``, ``feature_size``); points are ``[x,
y]``; ``maps`` are nested lists rows first, ``maps[name][row][column]``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import gradio as gr

from isa_explorer.explorer import (
    Explorer,
    ExplorerError,
    ExplorerModel,
    SessionStore,
    attribution,
    efficiency,
)
from isa_explorer.explorer import api as api_fns
from isa_explorer.explorer.compare import Comparison, available_models
from isa_explorer.explorer.compare_tab import build_compare_tab, compare_api, compare_key
from isa_explorer.explorer.service import CONTEXTS, NUM_EXAMPLES
from isa_explorer.explorer.ui import api_guard, guard, session_key
from isa_explorer.explorer.uploads import FORMAT_NAMES, MAX_SIDE, MIN_SIDE
from isa_explorer.pretrained import model_card, resolve_model_dir

#: Largest upload accepted by the server.
MAX_FILE_SIZE = "20mb"
#: Encoding of the images drawn for the browser: JPEG costs ~3 ms per 512x1024 image, PNG 30-100.
DISPLAY_FORMAT = "jpeg"
#: The status line before any image is loaded (and once the file box is cleared).
_START = "Pick an example or upload an image."
#: Toolbar of the images: no share button (nothing to share from a local server).
_IMAGE_BUTTONS = ["download", "fullscreen"]
_INTRO = """# ISA Explorer
Interlaced Sparse Self-Attention splits attention over an image into two sparse steps: a
**long-range** step among positions that lie 8 feature cells apart (one per 8x8 block), then a
**short-range** step inside each 8x8 block. Click a pixel of the prediction to see both maps of
that query and their product, the **combined** map: every position reaches every other one."""


def build_app(
    checkpoint: str | None = None,
    explorer: Explorer | None = None,
    max_sessions: int = 16,
    max_cache_mb: int = 1024,
    comparison: Comparison | None = None,
) -> gr.Blocks:
    """Build the Gradio app.

    Args:
        checkpoint: Model or run directory; ``None`` for the embedded default model. The model
            is loaded on the first request.
        explorer: Use this explorer instead of building one (tests share one model).
        max_sessions: Browser sessions whose analysed image is kept (least recently used out).
        max_cache_mb: Memory bound of those kept images, in MiB.
        comparison: The Compare tab's models; default the embedded default model of every
            head, the cached zoo models and ``checkpoint`` (:func:`available_models`).

    Returns:
        The ``gr.Blocks`` app (call ``.launch(...)``; see :func:`launch_kwargs`).
    """
    if explorer is None:
        store = SessionStore(max_sessions, max_cache_mb << 20)
        explorer = Explorer(ExplorerModel(checkpoint), store)
    ex, em = explorer, explorer.model
    if comparison is None:  # the Explore tab's model, if offered, is shared (loaded once)
        offer = available_models(checkpoint)
        for name, path in offer.items():
            try:
                if resolve_model_dir(path) == em.model_dir:
                    offer[name] = em
            except (OSError, ValueError):  # not a model: the comparison says so
                continue
        comparison = Comparison(offer, explorer.store)
    # One image per map of the served model's head (short titles; captions say what each shows).
    head_maps = em.head_class.maps
    caption = "; ".join(f"**{m.title}**: {m.caption}" for m in head_maps)

    def loaded_outputs(state, note: str = ""):
        view = ex.prediction_view(state, 0.5, False)
        h, w = state.size
        status = f"Loaded {state.source}: {w}x{h} pixels. Click the prediction to see attention."
        if note:
            status += f"\n\n**Note:** {note}"
        return (view, ex.legend(state), status, *[None] * len(head_maps), "", "")

    with gr.Blocks(title="ISA Explorer", analytics_enabled=False) as demo:
        gr.Markdown(_INTRO)
        gr.Markdown(em.summary, elem_id="model-summary")
        if card := model_card(em.model_dir):
            with gr.Accordion("Model card", open=False):
                gr.Markdown(card)
        with gr.Tab("Explore"):
            with gr.Row():
                with gr.Column(scale=1, min_width=280):
                    with gr.Group(visible=em.is_synthetic):
                        ex_index = gr.Slider(0, NUM_EXAMPLES - 1, 0, step=1, label="Example scene")
                        ex_context = gr.Radio(list(CONTEXTS), value="as drawn", label="Cue colour")
                        ex_button = gr.Button(
                            "Load example", variant="primary", elem_id="load-example"
                        )
                    upload = gr.File(
                        label=(
                            f"...or upload an image: {FORMAT_NAMES}, at most {MAX_FILE_SIZE}, "
                            f"sides of at least {MIN_SIDE} px (the longest side is resized to "
                            f"{MAX_SIDE} px)"
                        ),
                        file_types=["image"],
                        type="filepath",
                        elem_id="upload",
                        show_label=False,  # the clear button would cover a label: text above
                        render=False,
                    )
                    gr.Markdown(upload.label, elem_id="upload-help")
                    upload.render()
                    opacity = gr.Slider(0.0, 1.0, 0.6, step=0.05, label="Overlay opacity")
                    show_grid = gr.Checkbox(
                        False, label="Show feature cells and 8x8 blocks (interlacing)"
                    )
                    status = gr.Markdown(_START, elem_id="status")
                with gr.Column(scale=2):
                    pred = _image("Prediction (click a pixel)", "prediction")
                    legend = gr.HTML(elem_id="legend")
            query_md = gr.Markdown(elem_id="query")
            gr.Markdown(
                caption or f"This model's {em.head!r} head has no attention maps.",
                elem_id="maps-help",
            )
            with gr.Row():
                slots = [_image(m.title, f"map-{m.name}") for m in head_maps]
            regions = gr.Markdown(elem_id="regions")

        with gr.Tab("Compare"):
            build_compare_tab(comparison)

        with gr.Tab("Attribution"):
            gr.Markdown(
                "Which pixels made the model predict a class? Captum's **LayerGradCam** on the "
                "decoder's last feature layer (one forward and backward pass, image resized to "
                f"at most {attribution.GRADCAM_MAX_SIDE} px), or **IntegratedGradients** on the "
                f"pixels from a black image ({attribution.IG_BATCH} images per pass, at most "
                f"{attribution.IG_MAX_STEPS} steps, image resized to at most "
                f"{attribution.IG_MAX_SIDE} px). Both are bounded to stay within seconds on a "
                "CPU; Integrated Gradients costs about one Grad-CAM per step."
            )
            with gr.Row():
                method = gr.Radio(list(attribution.METHODS), value="LayerGradCam", label="Method")
                target = gr.Dropdown(
                    [attribution.CLICKED_PIXEL, *em.class_names],
                    value=attribution.CLICKED_PIXEL,
                    label="Explain",
                )
                n_steps = gr.Slider(
                    2, attribution.IG_MAX_STEPS, 8, step=1, label="Integrated Gradients steps"
                )
            explain_button = gr.Button("Compute attribution", elem_id="explain")
            attr_image = gr.Image(
                label="Attribution", interactive=False, format=DISPLAY_FORMAT, elem_id="attribution"
            )
            attr_text = gr.Markdown(elem_id="attribution-text")

        with gr.Tab("Efficiency") as eff_tab:
            gr.Markdown(
                "Peak memory and time of ISA against dense self-attention as the input grows "
                "(the published head: 512 channels, 256 query/key channels, 8x8 groups, "
                "features at 1/8 of the input). Markers are measured; dashed lines are the "
                "analytic memory model and the analytic FLOPs at each module's measured speed."
            )
            # No plot labels: a label badge sits over the top left of the figure.
            gr.Markdown("### Committed CPU results")
            committed_plot = gr.Plot(show_label=False, format="png", elem_id="committed-plot")
            committed_text = gr.Markdown("Open this tab to load the committed results.")
            gr.Markdown("### Live run\n\n" + efficiency.live_description())
            live_button = gr.Button(efficiency.live_button_text(), elem_id="live-benchmark")
            live_plot = gr.Plot(show_label=False, format="png", elem_id="live-plot")
            live_text = gr.Markdown(elem_id="live-text")

        # -- callbacks ------------------------------------------------------------------------
        load_outputs = [pred, legend, status, *slots, query_md, regions]

        def cleared_outputs(message: str) -> tuple:
            """No image: prediction, legend, maps, query and regions empty; ``message``."""
            return (None, "", message, *[None] * len(slots), "", "")

        @guard(len(load_outputs) + 1, status_index=2)
        def on_example(index, context, request: gr.Request):
            state = ex.load_example(session_key(request), int(index), context)
            return (*loaded_outputs(state), None)  # the file box no longer names what is shown

        def on_new_file(path, request: gr.Request):
            """A new file replaces the image at once: the old one's results and stored state go
            before the new one is analysed, so a file that fails leaves no stale image."""
            ex.store.discard(session_key(request))
            return cleared_outputs(f"Analysing {Path(path).name if path else 'the upload'}...")

        def on_clear(request: gr.Request):
            """Clearing the file box removes its image too (a click then asks for an image)."""
            ex.store.discard(session_key(request))
            return cleared_outputs(_START)

        @guard(len(load_outputs), status_index=2)
        def on_upload(path, request: gr.Request):
            return loaded_outputs(ex.load_file(session_key(request), path), em.upload_note)

        click_outputs = [pred, *slots, query_md, regions, status]

        def click_values(result, op, grid, with_status=True):
            state, (x, y), (fx, fy) = result.state, result.query, result.cell
            panels = [result.panels.get(m.name) for m in head_maps]
            query = (
                f"**Query** pixel (x={x}, y={y}), feature cell ({fx}, {fy}): predicted "
                f"**{result.class_name}** (p = {result.confidence:.2f})."
            )
            status = f"{state.source}: attention of pixel ({x}, {y}). Click elsewhere to compare."
            status = status if with_status else gr.skip()  # view changes keep the status line
            return (ex.prediction_view(state, op, grid), *panels, query, result.regions, status)

        @guard(len(click_outputs), status_index=len(click_outputs) - 1)
        def on_select(op, grid, evt: gr.SelectData, request: gr.Request):
            if evt is None or evt.index is None or len(evt.index) != 2:
                raise ExplorerError("click on a pixel of the prediction image")
            result = ex.click_display(session_key(request), evt.index[0], evt.index[1], op, grid)
            return click_values(result, op, grid)

        @guard(len(click_outputs), status_index=len(click_outputs) - 1)
        def on_view(op, grid, request: gr.Request):
            state = ex.store.get(session_key(request))
            skip = [gr.skip()] * (len(click_outputs) - 1)
            if state is None:
                return (gr.skip(), *skip)
            if state.query is None or state.cache is None:
                return (ex.prediction_view(state, op, grid), *skip)
            result = ex.click(session_key(request), *state.query, op, grid)
            return click_values(result, op, grid, with_status=False)

        @guard(2, status_index=1)
        def on_explain(tgt, meth, steps, op, request: gr.Request):
            return attribution.explain(ex, session_key(request), tgt, meth, int(steps), op)

        @guard(2, status_index=1)
        def on_efficiency(live: bool):
            try:
                return efficiency.live_run() if live else efficiency.committed_report()
            except efficiency.EfficiencyUnavailable as err:
                return None, f"**Not available:** {err}"

        vis = dict(api_visibility="private")
        eff_tab.select(on_efficiency, gr.State(False), [committed_plot, committed_text], **vis)
        live_button.click(
            on_efficiency, gr.State(True), [live_plot, live_text], concurrency_limit=1, **vis
        )
        explain_button.click(
            on_explain, [target, method, n_steps, opacity], [attr_image, attr_text], **vis
        )
        ex_button.click(on_example, [ex_index, ex_context], [*load_outputs, upload], **vis).then(
            on_view, [opacity, show_grid], click_outputs, **vis
        )
        upload.upload(on_new_file, [upload], load_outputs, **vis).then(
            on_upload, [upload], load_outputs, **vis
        ).then(on_view, [opacity, show_grid], click_outputs, **vis)
        upload.clear(on_clear, None, load_outputs, **vis)
        pred.select(on_select, [opacity, show_grid], click_outputs, **vis)
        opacity.release(on_view, [opacity, show_grid], click_outputs, **vis)
        show_grid.change(on_view, [opacity, show_grid], click_outputs, **vis)

        _api_endpoints(ex)
        compare_api(comparison)

        def forget_session(request: gr.Request) -> None:
            """A closed tab frees its analysed image at once (not only when evicted)."""
            ex.store.discard(session_key(request))
            comparison.store.discard(compare_key(request))

        demo.unload(forget_session)
    return demo


def _image(label: str, elem_id: str) -> gr.Image:
    """An output image of the Explore tab: display format, download and fullscreen buttons."""
    return gr.Image(
        label=label,
        interactive=False,
        format=DISPLAY_FORMAT,
        buttons=_IMAGE_BUTTONS,
        elem_id=elem_id,
    )


def _api_endpoints(ex: Explorer) -> None:
    """Hidden components behind the ``predict`` and ``attention`` API endpoints.

    gradio_client names the parameters after the functions' own (``image``, ``x``, ``y``).
    """
    with gr.Row(visible=False):
        # A file, not gr.Image: Gradio would decode a gr.Image upload before the project sees
        # it, so a corrupt file would give clients a bare exception instead of our message.
        image_in = gr.File(type="filepath", label="image")
        # No precision: Gradio would round 3.5 to 4 before the explorer could refuse it.
        x_in = gr.Number(label="x (pixel column)")
        y_in = gr.Number(label="y (pixel row)")
        overlay = gr.Image(label="prediction overlay", format="png")
        info = gr.JSON(label="prediction")
        maps = gr.JSON(label="attention maps")
        predict_button, attention_button = gr.Button("predict"), gr.Button("attention")

    @api_guard
    def predict(image):
        """Prediction overlay and per-class pixel shares of an image file."""
        state = api_fns.analyse_cached(ex, image)
        return ex.prediction_view(state, 0.5), api_fns.predict_summary(ex, state)

    @api_guard
    def attention(image, x, y):
        """The attention maps of the model's head (feature grid) of pixel (x, y)."""
        state = api_fns.analyse_cached(ex, image)
        return api_fns.attention_summary(ex, state, x, y)

    predict_button.click(predict, [image_in], [overlay, info], api_name="predict")
    attention_button.click(attention, [image_in, x_in, y_in], [maps], api_name="attention")


def launch_kwargs(host: str = "127.0.0.1", port: int | None = None, share: bool = False) -> dict:
    """Arguments of ``demo.launch`` (theme, upload limit, bind address)."""
    return dict(
        server_name=host,
        server_port=port,
        share=share,
        max_file_size=MAX_FILE_SIZE,
        theme=gr.themes.Soft(),
        footer_links=["api"],
    )


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Serve the app (blocks until interrupted)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint",
        metavar="MODEL",
        help="model directory, train/fit.py run directory or zoo name (cityscapes-r50, ...; "
        "`isa-explorer zoo list`); default: the embedded model",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (Gradio picks 7860+)")
    parser.add_argument("--share", action="store_true", help="create a public share link")
    parser.add_argument("--max-sessions", type=int, default=16, help="sessions kept in memory")
    parser.add_argument("--max-cache-mb", type=int, default=1024, help="memory for those sessions")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        demo = build_app(
            args.checkpoint, max_sessions=args.max_sessions, max_cache_mb=args.max_cache_mb
        )
    except (OSError, ValueError) as err:  # no such model, damaged files, zoo download errors
        parser.error(str(err))
    demo.queue(default_concurrency_limit=2).launch(
        **launch_kwargs(args.host, args.port, args.share)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
