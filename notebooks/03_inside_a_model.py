# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 3. Inside a model: where does a pixel look?
#
# **What this notebook teaches.** How to read the attention of a whole ISANet on an image:
#
# - load the model that ships with the package and run it on a *synthetic context scene*, where
#   the class of the grey objects is decided by a coloured cue far away;
# - pick query pixels and draw their **long-range**, **short-range** and **combined** attention
#   maps (`isa_explorer.attention`), and measure how much of the combined attention lands on the
#   cue;
# - flip the cue's colour and watch the objects' prediction;
# - compare with a **dense** attention head on the same encoder (one softmax over all positions,
#   `N^2` memory);
# - ask a different question with gradient attributions (captum's `LayerGradCam` and
#   `IntegratedGradients`): which input pixels does the object's score depend on?
#
# The numbers printed below are computed live from the shipped weights: read them, don't assume
# them. Everything runs on the CPU in about a minute.

# %%
import json

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from isa_explorer.attention import capture_attention, query_maps
from isa_explorer.data.synthetic import SYNTHETIC_CONTEXT_CLASSES, SYNTHETIC_INFO, generate
from isa_explorer.explorer.attribution import attribute
from isa_explorer.models import ISANet
from isa_explorer.pretrained import DEFAULT_MODEL_DIR, load_default_model, model_card

_ = torch.manual_seed(0)
model = load_default_model()
card = model_card()
for line in card.splitlines()[:1] + [ln for ln in card.splitlines() if "mIoU" in ln]:
    print(line)  # the card's title and its scores, if it has any
# the constructor arguments saved next to the weights
config = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())
print(
    f"{model.name}: {model.classes} classes, decoder {config['decoder_channels']} ch, "
    f"ISA blocks {tuple(config['decoder_down_factor'])}, output stride {model.output_stride}"
)
print("classes:", model.class_names)

# %% [markdown]
# ## 1. A scene whose labels need context
#
# `generate(seed, index, size)` draws scene `index` of the synthetic dataset: one red or blue
# *cue* near an edge, grey objects more than a third of the width away (class
# `object-red-context` or `object-blue-context`, depending only on the cue), green discs and
# yellow bars (classes a local window decides) on a textured background.
#
# The weights are the shipped default model's, trained on these scenes (its card is printed
# above: held-out mIoU 0.92, the context classes included).

# %%
SIZE = (128, 256)
SEED, INDEX = 0, 3
image_np, labels_np = generate(SEED, INDEX, SIZE)  # (H, W, 3) uint8, (H, W) int64
image = torch.from_numpy(image_np).permute(2, 0, 1)  # (3, H, W)
labels = torch.from_numpy(labels_np)
PALETTE = np.asarray(SYNTHETIC_INFO.palette, dtype=np.uint8)


def predict(img: torch.Tensor) -> torch.Tensor:
    """Class ids ``(H, W)`` of one 0-255 image ``(3, H, W)``."""
    return model.predict(model.normalize(img[None].float()))[0].argmax(0)


pred = predict(image)
present = labels.unique().tolist()
print("classes in the scene:", [SYNTHETIC_INFO.class_names[c] for c in present])
for c in present:
    region = labels == c
    print(
        f"  {SYNTHETIC_INFO.class_names[c]:20s} {int(region.sum()):6d} px, "
        f"predicted right {float((pred[region] == c).float().mean()):.0%}"
    )

fig, axes = plt.subplots(1, 3, figsize=(14, 2.8))
for ax, (title, pic) in zip(
    axes,
    (("image", image_np), ("labels", PALETTE[labels_np]), ("prediction", PALETTE[pred.numpy()])),
    strict=True,
):
    ax.imshow(pic)
    ax.set_title(title)
    ax.set_axis_off()
plt.tight_layout()
plt.show()


# %% [markdown]
# ## 2. Query pixels and their three maps
#
# We choose queries from the labels: the middle of a grey context object, the cue, a green disc
# and a background pixel. `capture_attention` runs the model once and keeps the queries and keys
# of both ISA steps; `query_maps` then gives any pixel's maps in `O(N)` memory.


# %%
def central_pixel(mask: torch.Tensor) -> tuple[int, int]:
    """``(x, y)`` of the pixel of ``mask`` nearest to the mask's centroid."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    d = (ys - ys.float().mean()) ** 2 + (xs - xs.float().mean()) ** 2
    i = int(d.argmin())
    return int(xs[i]), int(ys[i])


context_class = next(c for c in SYNTHETIC_CONTEXT_CLASSES if (labels == c).any())
cue_class = 1 if (labels == 1).any() else 2
objects = labels == context_class


def component(mask: torch.Tensor, y: int, x: int) -> torch.Tensor:
    """The connected piece of ``mask (H, W)`` holding pixel ``(y, x)`` (grown 3x3 at a time)."""
    piece = torch.zeros_like(mask)
    piece[y, x] = True
    while True:
        grown = F.max_pool2d(piece[None, None].float(), 3, 1, 1)[0, 0].bool() & mask
        if torch.equal(grown, piece):
            return piece
        piece = grown


one_object = component(objects, *(int(v) for v in torch.nonzero(objects)[0]))
queries = {
    f"grey object ({SYNTHETIC_INFO.class_names[context_class]})": central_pixel(one_object),
    f"cue ({SYNTHETIC_INFO.class_names[cue_class]})": central_pixel(labels == cue_class),
    "background": central_pixel(labels == 0),
}
if (labels == 5).any():
    queries["green disc"] = central_pixel(labels == 5)
print(queries)

cache = capture_attention(model, image)
print(f"feature map {cache.feature_size}, cache {cache.nbytes / 1e3:.0f} kB")


def overlay(ax, m: torch.Tensor, cmap: str = "magma") -> None:
    """Draw map ``m (H, W)`` over the image on a 0..max scale (a uniform map shows flat)."""
    ax.imshow(image_np)
    ax.imshow(m.numpy(), cmap=cmap, alpha=0.65, vmin=0, vmax=float(m.max()) or 1.0)
    ax.set_axis_off()


names = ("long", "short", "combined")
fig, axes = plt.subplots(len(queries), 3, figsize=(14, 2.5 * len(queries)), squeeze=False)
for row, (what, (x, y)) in enumerate(queries.items()):
    maps = query_maps(cache, x, y)
    for col, name in enumerate(names):
        ax = axes[row, col]
        overlay(ax, maps.on_image(name))
        ax.plot(x, y, "c*", ms=13, mec="k")
        ax.set_title(f"{what}: {name}", fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# The long-range map is a lattice of cells one block apart; the short-range map is the query's
# block; the combined map (the product of the two sparse affinities, notebook 1) covers the
# whole image. How much of the combined attention falls on the cue, against the cue's share of
# the image? A model that uses the cue to class the grey objects should look at it from there.

# %%
cue_cells = F.max_pool2d(
    (labels == cue_class)[None, None].float(), model.output_stride, ceil_mode=True
)[0, 0].bool()[: cache.feature_size[0], : cache.feature_size[1]]  # feature cells touching the cue
area = float(cue_cells.float().mean())
print(f"cue covers {area:.1%} of the feature cells (uniform attention would put that much on it)")
for what, (x, y) in queries.items():
    combined = query_maps(cache, x, y)["combined"]
    print(f"  {what:34s} puts {float(combined[cue_cells].sum()):.1%} of its attention on the cue")

# %% [markdown]
# ## 3. Flip the cue
#
# `generate(..., context=...)` redraws the same scene with the other cue colour: every other
# pixel is identical, and the grey objects swap class. Does the prediction on the objects follow?

# %%
flipped_np, flipped_labels = generate(SEED, INDEX, SIZE, context=1 - (cue_class - 1))
flipped_pred = predict(torch.from_numpy(flipped_np).permute(2, 0, 1))
changed = int((torch.from_numpy(flipped_np) != torch.from_numpy(image_np)).any(-1).sum())
print(f"{changed} pixels differ between the two images (the cue)")
for title, p, lab in (
    ("original", pred, labels),
    ("cue flipped", flipped_pred, torch.from_numpy(flipped_labels)),
):
    on_objects = p[objects]
    share = {
        SYNTHETIC_INFO.class_names[c]: f"{float((on_objects == c).float().mean()):.0%}"
        for c in SYNTHETIC_CONTEXT_CLASSES
    }
    print(
        f"{title:12s} true class {SYNTHETIC_INFO.class_names[int(lab[objects][0])]:20s} predicted {share}"
    )

fig, axes = plt.subplots(1, 2, figsize=(10, 2.6))
for ax, pic, title in (
    (axes[0], flipped_np, "cue flipped"),
    (axes[1], PALETTE[flipped_pred.numpy()], "prediction"),
):
    ax.imshow(pic)
    ax.set_title(title)
    ax.set_axis_off()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 4. A dense head on the same encoder
#
# `ISANet(head="dense")` replaces the two sparse steps by one relation block over all `N`
# positions: its map is one softmax over the whole feature map, and its affinity costs `N^2`.
# For a like-for-like picture we build it from the shipped model: same encoder, same input and
# output convolutions and classifier, and as its single relation block the ISA model's
# long-range block. Its maps show what the *same* queries and keys do without the interlaced
# grouping. (A dense head *trained* on the same budget is notebook 4's subject.)

# %%
dense = ISANet(**{**config, "head": "dense"})
state = {
    k.replace("decoder.global_relation.", "decoder.relation."): v
    for k, v in model.state_dict().items()
    if not k.startswith("decoder.local_relation.")
}
dense.load_state_dict(state, strict=True)
dense.eval()
dense_cache = capture_attention(dense, image)

h, w = cache.feature_size
n = h * w
g = cache.record.grid
print(f"N = {n} positions: dense affinity {n * n:,} entries")
print(
    f"ISA affinities: {n * g.gh * g.gw + n * g.lh * g.lw:,} entries ({g.gh}x{g.gw} + {g.lh}x{g.lw} per position)"
)

x, y = next(iter(queries.values()))
fig, axes = plt.subplots(1, 2, figsize=(10, 2.6))
for ax, (title, m) in zip(
    axes,
    (
        ("ISA combined", query_maps(cache, x, y).on_image("combined")),
        ("dense", query_maps(dense_cache, x, y).on_image("dense")),
    ),
    strict=True,
):
    overlay(ax, m)
    ax.plot(x, y, "c*", ms=13, mec="k")
    ax.set_title(f"{title}: {float(m[labels == cue_class].mean() / m.mean()):.2f}x mean on the cue")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 5. Click a pixel
#
# The same maps, interactive: click any panel to move the query. The maps come from the cached
# queries and keys (`capture_attention` ran once when the scene was loaded; `query_maps` per
# click, a few ms), the same functions the browser app uses. The right panel is the same pixel
# under the dense head built above. The controls pick the example scene and its cue colour,
# the overlay opacity, whether to draw the 8x8 groups, your own image, and any zoo model
# already in the cache (`isa-explorer zoo download cityscapes-r50`). In JupyterLab the figure
# is a live ipympl canvas (as `%matplotlib widget` gives; ipympl and ipywidgets are in the
# notebooks extra); the PNG below the controls is the initial state, for readers without a
# kernel.

# %%
import tempfile  # noqa: E402

from IPython.display import display  # noqa: E402

from isa_explorer.explorer.widgets import AttentionView  # noqa: E402

dense_dir = tempfile.mkdtemp(prefix="dense_head_")
dense.save_pretrained(dense_dir)
view = AttentionView(compare=dense_dir, compare_title="dense head, same weights")
view.load_image(image_np, f"scene {INDEX}")  # the scene of this notebook
display(view.widget())
display(view.snapshot())

# %%
x, y = next(iter(queries.values()))
result = view.select(x, y)  # what a click on (x, y) does
print(f"query {result.query} -> cell {result.cell}, {result.class_name}")
print(result.regions.splitlines()[-1])

# %% [markdown]
# ## 6. Gradient attributions with captum
#
# Attention maps say where the decoder *mixes* features from; attributions ask which *input
# pixels* a score depends on. The score here is the mean logit of the object class over the
# pixels of one grey object. `attribute` is the same function the app's Attribution tab runs:
# `LayerGradCam` weighs the activations of the decoder's last feature layer (`out_conv`'s batch
# norm) by their gradients, a coarse map at the feature resolution; `IntegratedGradients`
# integrates the input gradient from a black image to this one, in a few steps to keep it cheap.

# %%
maps = {}
for method in ("LayerGradCam", "IntegratedGradients"):
    result = attribute(
        model, image_np, labels_np, context_class, method=method, n_steps=8,
        region=one_object.numpy(),
    )  # fmt: skip
    print(f"{method}: {result.note}; {result.seconds:.1f} s at {result.size}")
    maps[method] = torch.from_numpy(result.heat)  # (H, W), scaled to [0, 1]
cam, ig_map = maps["LayerGradCam"], maps["IntegratedGradients"]

cue = labels == cue_class
for name, m in (("GradCAM", cam), ("IntegratedGradients", ig_map)):
    total = float(m.sum()) or 1.0
    print(
        f"{name:20s} share on the object {float(m[one_object].sum()) / total:.1%}, "
        f"on the cue {float(m[cue].sum()) / total:.1%} (the cue is {float(cue.float().mean()):.1%} of the image)"
    )

fig, axes = plt.subplots(1, 2, figsize=(10, 2.6))
for ax, (title, m) in zip(
    axes, (("LayerGradCam", cam), ("IntegratedGradients |attr|", ig_map)), strict=True
):
    overlay(ax, m, cmap="viridis")
    ax.contour(one_object.numpy(), levels=[0.5], colors="w", linewidths=1)
    ax.set_title(title)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Exercises
#
# 1. Move the scene slider of section 5 to other scenes, including one whose cue is on the right,
#    and click the grey objects and the green discs. Is the share of the
#    combined attention on the cue larger for grey objects than for green discs? Why would it be?
# 2. Pick a query on the *edge* of an object instead of its centre. How do the short-range maps
#    change?
# 3. Set `model.decoder.order = "short-long"` (not what the model was trained with) and redraw the
#    maps. What changes in the combined map, and what happens to the prediction?
# 4. In section 4 use the local (short-range) relation block as the dense head's relation. Which
#    of the two blocks looks further?
# 5. Raise `n_steps` of `IntegratedGradients` to 32: does the map change? (`attribute` caps it
#    at `IG_MAX_STEPS` to keep the app interactive.)
