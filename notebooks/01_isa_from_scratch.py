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
# # 1. Interlaced sparse self-attention from scratch
#
# **What this notebook teaches.** Self-attention over a feature map of `N` positions costs `N^2`.
# Interlaced Sparse Self-Attention (ISA) replaces the one dense attention by two sparse ones:
#
# 1. a **long-range** step: positions that sit at the *same offset* inside their local block
#    (so `lh` rows / `lw` columns apart) attend to each other;
# 2. a **short-range** step: positions of the *same local block* attend to each other.
#
# You will see, on a grid of numbered positions small enough to print:
#
# - the grouping is nothing but a permutation of the positions (the package's `GroupGrid`);
# - each step equals dense attention restricted by a block mask -- checked numerically against the
#   package's `ISADecoder`;
# - the product of the two sparse affinity matrices, `C = S @ L`, has **no zero entry**: after
#   both steps every position has drawn information from every other one. We prove it, check it
#   and draw it.
#
# Everything runs on the CPU in seconds, with random weights: the structure, not the training,
# is the subject here.

# %%
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from isa_explorer.attention import capture_attention, query_maps
from isa_explorer.heads.grid import GroupGrid
from isa_explorer.heads.isa import ISADecoder, affinity_matrices
from isa_explorer.models import ISANet

_ = torch.manual_seed(0)

# %% [markdown]
# ## 1. A grid of positions and its two groupings
#
# A feature map of `h x w = 8 x 12` positions, local blocks of `lh x lw = 4 x 4`
# (`down_factor`; the published models use 8 x 8 on maps of about 64 x 128). There are
# `gh x gw = 2 x 3` blocks. Position `(r, c)` lies in block `(r // lh, c // lw)` at offset
# `(r % lh, c % lw)`.

# %%
h, w = 8, 12
grid = GroupGrid.of(h, w, down_factor=(4, 4))
N = h * w
print(grid)
print(f"{N} positions: {grid.lh * grid.lw} long-range groups of {grid.gh * grid.gw} positions,")
print(f"{grid.gh * grid.gw} short-range blocks of {grid.lh * grid.lw} positions")

# %% [markdown]
# `GroupGrid.to_tokens` turns a `(B, C, h, w)` map into the sequences one step attends within.
# Feeding it the *index* of every position shows which positions end up together.

# %%
index_map = torch.arange(N, dtype=torch.float32).view(1, 1, h, w)  # (B=1, C=1, h, w)
long_tokens = grid.to_tokens(index_map, "long")  # (lh*lw groups, gh*gw positions, 1)
short_tokens = grid.to_tokens(index_map, "short")  # (gh*gw blocks, lh*lw positions, 1)
print("long-range groups  (first 3 of 16):\n", long_tokens[:3, :, 0].long())
print("short-range blocks (first 2 of 6):\n", short_tokens[:2, :, 0].long())


# %%
def group_ids(tokens: torch.Tensor) -> torch.Tensor:
    """Group id of every position, read off the token layout ``(groups, length, 1)``."""
    ids = torch.empty(N, dtype=torch.long)
    for g, members in enumerate(tokens[:, :, 0].long()):
        ids[members] = g
    return ids


long_id, short_id = group_ids(long_tokens), group_ids(short_tokens)


def draw_groups(ax, ids: torch.Tensor, title: str, cmap: str) -> None:
    """Colour each position of the ``h x w`` grid by its group and print its index on it."""
    ax.imshow(ids.view(h, w).numpy(), cmap=cmap, vmin=0, vmax=ids.max().item())
    for r in range(h):
        for c in range(w):
            ax.text(c, r, str(r * w + c), ha="center", va="center", fontsize=7)
    for r in range(0, h + 1, grid.lh):  # block boundaries
        ax.axhline(r - 0.5, color="k", lw=2)
    for c in range(0, w + 1, grid.lw):
        ax.axvline(c - 0.5, color="k", lw=2)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])


fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
draw_groups(axes[0], long_id, "long-range group (same offset in the block)", "tab20")
draw_groups(axes[1], short_id, "short-range block (same local block)", "Set3")
plt.tight_layout()
plt.show()

# %% [markdown]
# Left: every colour appears once in every block -- a long-range group takes one position from
# each block, all `lh` rows / `lw` columns apart. Right: a short-range group is a block.
#
# The regrouping is a **permutation**: the long-step token layout lists every position exactly
# once. Permuting the map so that each long-range group is contiguous gives the "interlaced"
# picture of the paper: the map is cut into `lh x lw` tiles of `gh x gw` positions.

# %%
perm_long = long_tokens.flatten().long()
assert torch.equal(perm_long.sort().values, torch.arange(N)), "not a permutation"
# (gh, lh, gw, lw) -> (lh, gh, lw, gw): offsets outside, blocks inside
interlaced = long_id.view(grid.gh, grid.lh, grid.gw, grid.lw).permute(1, 0, 3, 2).reshape(h, w)
index_interlaced = torch.arange(N).view(grid.gh, grid.lh, grid.gw, grid.lw)
index_interlaced = index_interlaced.permute(1, 0, 3, 2).reshape(h, w)

fig, ax = plt.subplots(figsize=(5.5, 3.8))
ax.imshow(interlaced.numpy(), cmap="tab20")
for r in range(h):
    for c in range(w):
        ax.text(c, r, str(int(index_interlaced[r, c])), ha="center", va="center", fontsize=7)
for r in range(0, h + 1, grid.gh):
    ax.axhline(r - 0.5, color="k", lw=2)
for c in range(0, w + 1, grid.gw):
    ax.axvline(c - 0.5, color="k", lw=2)
ax.set_title("after the permutation: long-range groups are contiguous tiles")
ax.set_xticks([])
ax.set_yticks([])
plt.show()

# %% [markdown]
# Between the two steps the decoder needs one more permutation (`GroupGrid.swap`), from the
# long-step layout straight to the short-step layout, and one at the end back to the map.

# %%
assert torch.equal(grid.swap(long_tokens, "long"), short_tokens)
assert torch.equal(grid.to_map(short_tokens, "short"), index_map)
print("long tokens --swap--> short tokens --to_map--> the original map: OK")

# %% [markdown]
# ## 2. Each step is dense attention under a block mask
#
# Write the two groupings as `N x N` boolean masks: `M_long[p, q]` is true when `p` and `q` share
# an offset, `M_short[p, q]` when they share a block. Dense attention whose logits are set to
# `-inf` outside the mask is exactly one ISA step: softmax gives zero weight outside the group
# and renormalises inside it.

# %%
M_long = long_id[:, None] == long_id[None, :]  # (N, N)
M_short = short_id[:, None] == short_id[None, :]  # (N, N)

fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
for ax, m, name in zip(axes, (M_long, M_short), ("M_long", "M_short"), strict=True):
    ax.imshow(m.numpy(), cmap="Greys", interpolation="nearest")
    ax.set_title(f"{name}: {int(m.sum())} of {N * N} pairs")
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
plt.tight_layout()
plt.show()

# %% [markdown]
# Now the real decoder: an `ISADecoder` with random weights (eval mode, so BatchNorm uses its
# running statistics and treats every position alike). We run its two relation blocks on
# *all* `N` positions as one sequence, with the masks, and compare with the decoder's own
# grouped computation. `F.scaled_dot_product_attention(..., attn_mask=mask)` computes the same
# masked attention in a fused kernel.

# %%
decoder = ISADecoder(in_channels=8, classes=3, channels=16, isa_channels=8, down_factor=(4, 4))
decoder.eval()
x = torch.randn(1, 8, h, w)  # (B, in_channels, h, w): an encoder's feature map


def masked_dense_attention(block, t: torch.Tensor, mask: torch.Tensor):
    """One relation block over all positions ``t (1, N, C)``, restricted to ``mask (N, N)``.

    Returns the block's output ``(1, N, C)`` and the affinity matrix ``(N, N)``.
    """
    q, k = block.query_project(t), block.key_project(t)  # (1, N, Ck) each: 1x1 convs on tokens
    v = block.value_project(t)  # (1, N, C)
    logits = (q @ k.transpose(1, 2)) * block.scale  # (1, N, N)
    affinity = logits.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    fused = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=block.scale)
    torch.testing.assert_close(fused, affinity @ v)
    return block.output_project(affinity @ v), affinity[0]


with torch.no_grad():
    isa_context, residual, _ = decoder.context(x)  # the package's ISA: (1, C, h, w) each
    tokens = residual.flatten(2).transpose(1, 2)  # (1, N, C), row-major positions
    after_long, L = masked_dense_attention(decoder.global_relation, tokens, M_long)
    after_short, S = masked_dense_attention(decoder.local_relation, after_long, M_short)
    masked_context = after_short.transpose(1, 2).reshape(1, -1, h, w)  # back to (1, C, h, w)

print("max |ISA - masked dense|:", float((isa_context - masked_context).abs().max()))
torch.testing.assert_close(isa_context, masked_context)

# %% [markdown]
# Identical up to float rounding. The masks are essential: the same blocks without masks (plain
# dense attention twice) give something else.

# %%
everything = torch.ones(N, N, dtype=torch.bool)
with torch.no_grad():
    dense1, _ = masked_dense_attention(decoder.global_relation, tokens, everything)
    dense2, _ = masked_dense_attention(decoder.local_relation, dense1, everything)
print("typical |ISA output|      :", float(after_short.abs().mean()))
print("max |ISA - unmasked dense|:", float((after_short - dense2).abs().max()))

# %% [markdown]
# ## 3. Two sparse affinities, one dense product
#
# `L` and `S` are the affinity matrices of the two steps (rows sum to one). The long step
# computes `y = L v`, the short step then mixes `y` with `S`; up to the value and output
# projections the whole thing is `S @ L @ v`. So the *combined* affinity is `C = S @ L`.

# %%
C = S @ L
for name, m in (("L", L), ("S", S), ("C = S @ L", C)):
    nnz = int((m > 0).sum())
    print(f"{name:10s} non-zeros {nnz:5d} / {N * N}  rows sum to {float(m.sum(1).mean()):.4f}")
assert (C > 0).all(), "some position does not reach another one"

fig, axes = plt.subplots(1, 3, figsize=(13, 4.5))
for ax, m, name in zip(
    axes, (L, S, C), ("L (long-range)", "S (short-range)", "C = S @ L"), strict=True
):
    ax.spy(m.numpy() > 0, markersize=1.2)
    ax.set_title(f"{name}: {int((m > 0).sum())} non-zeros")
plt.tight_layout()
plt.show()

# %% [markdown]
# `L` has `N * gh * gw` non-zeros, `S` has `N * lh * lw`, and `C` has all `N^2`.
#
# ### Why `C` has no zero
#
# `C[p, k] = sum_j S[p, j] * L[j, k]`. A term is non-zero only if `j` is in the **block of
# `p`** (else `S[p, j] = 0`) and `j` has the **offset of `k`** (else `L[j, k] = 0`). A block
# holds `lh * lw` positions with `lh * lw` different offsets: exactly one position `j(p, k)` of
# `p`'s block has `k`'s offset. So
#
# `C[p, k] = S[p, j(p, k)] * L[j(p, k), k] > 0`,
#
# a product of two softmax weights, which are never zero. Numerically: counting the paths
# `p -> j -> k` with non-zero weight gives exactly one for every pair.

# %%
paths = (S > 0).double() @ (L > 0).double()  # paths[p, k] = number of j with both weights > 0
print("paths per (p, k):", paths.unique().tolist())
assert torch.equal(paths, torch.ones(N, N, dtype=torch.float64))

# %% [markdown]
# Drawn for one target `k` and a few queries `p`: the information of `k` first travels along its
# long-range group (the long step), landing on one position of every block; the short step then
# carries it inside each block to `p`.

# %%
k = 5 * w + 10  # position (5, 10)
queries = [0, 2 * w + 5, 7 * w + 1, 3 * w + 11]
fig, ax = plt.subplots(figsize=(6.5, 4.5))
highlight = M_long[k].view(h, w).float().numpy()  # k's long-range group
ax.imshow(highlight, cmap="Blues", vmin=0, vmax=2)
for r in range(0, h + 1, grid.lh):
    ax.axhline(r - 0.5, color="k", lw=2)
for c in range(0, w + 1, grid.lw):
    ax.axvline(c - 0.5, color="k", lw=2)
kr, kc = divmod(k, w)
ax.plot(kc, kr, "r*", ms=16, label="key k")
for p in queries:
    j = int(torch.nonzero(M_short[p] & M_long[k]))  # the one relay j(p, k)
    (pr, pc), (jr, jc) = divmod(p, w), divmod(j, w)
    ax.annotate("", (jc, jr), (kc, kr), arrowprops=dict(arrowstyle="->", color="tab:blue"))
    ax.annotate("", (pc, pr), (jc, jr), arrowprops=dict(arrowstyle="->", color="tab:orange"))
    ax.plot(pc, pr, "o", color="tab:orange", ms=9)
ax.set_title("k -> j (long step, blue) -> p (short step, orange)")
ax.set_xticks([])
ax.set_yticks([])
plt.show()

# %% [markdown]
# ### Try it: sliders for the map, the blocks and the order
#
# Move the sliders (map size, block side, order) and click a position of the left grid: its
# long-range group (blue) and short-range block (orange) are drawn, and the right panel is the
# row of `C = S @ L` (`L @ S` for short-long) from that position, green where it is non-zero.
# Its title says whether every position is reached, for every query at once. Padded positions
# are grey. (In JupyterLab the figure is a live ipympl canvas, as `%matplotlib widget` gives; the PNG
# is the initial state.)

# %%
from IPython.display import display  # noqa: E402

from isa_explorer.explorer.widgets import GroupingView  # noqa: E402

grouping = GroupingView(h=7, w=10, group=4, query=(2, 3))
display(grouping.widget())
display(grouping.snapshot())

# %%
for setting in (dict(h=7, w=10, group=4), dict(h=16, w=16, group=8), dict(order="short-long")):
    full = grouping.set(**setting).all()  # what moving the sliders does
    print(f"{setting}: C reaches every position from every position: {bool(full)}")

# %% [markdown]
# ## 4. The same matrices from a whole model
#
# `isa_explorer.attention` does this on any `ISANet`: `capture_attention` keeps the queries and
# keys of one forward pass, `affinity_matrices` builds the dense `L` and `S` (small maps only:
# `N^2` memory), and `query_maps` gives one query's long, short and combined maps in `O(N)`
# memory, without ever forming `C`. A ResNet-18 model with random weights on a 64 x 96 image has
# an 8 x 12 feature map (output stride 8): our grid.

# %%
model = ISANet(
    encoder_name="resnet18",
    encoder_weights=None,
    classes=3,
    decoder_channels=16,
    decoder_isa_channels=8,
    decoder_down_factor=(4, 4),
).eval()
image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)
cache = capture_attention(model, image)
A = affinity_matrices(cache.record)
C_model = A["short"] @ A["long"]
print("feature map:", cache.feature_size, " C has a zero:", bool((C_model == 0).any()))

qx, qy = 44, 20  # an image pixel
maps = query_maps(cache, qx, qy)
fx, fy = maps.query_feature
row = C_model[fy * w + fx].view(h, w)
torch.testing.assert_close(maps["combined"].double(), row, atol=1e-6, rtol=1e-5)

fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
for ax, name in zip(axes, ("long", "short", "combined"), strict=True):
    im = ax.imshow(maps.maps[name].numpy(), cmap="magma")
    ax.plot(fx, fy, "c*", ms=12)
    ax.set_title(f"{name} map of feature cell ({fx}, {fy})")
    fig.colorbar(im, ax=ax, fraction=0.03)
plt.tight_layout()
plt.show()

# %% [markdown]
# The long map lights up one cell per block, the short map one block, and the combined map the
# whole grid (with random weights it is far from uniform, but nowhere zero).
#
# ## Exercises
#
# 1. Use `down_factor=(2, 3)` and then `(8, 12)` for the grid. What do `L` and `S` become in the
#    extreme case of a single block? Does the proof still hold?
# 2. Build the decoder with `order="short-long"`. Which product is the combined affinity now?
#    Redo the path count.
# 3. Take `h, w = 7, 10` with 4 x 4 blocks: `GroupGrid` pads the map symmetrically to 8 x 12
#    (`pad_top`, `pad_left`). Where are the padded positions, and what do the rows of `C`
#    restricted to the real positions sum to?
# 4. Show that one step twice is not enough: `L @ L` and `S @ S` have zeros. Why?
# 5. Count the entries of the masks: `N * (gh * gw) + N * (lh * lw)` against `N^2`. For
#    `N = 64 * 128` positions, which block size makes the sum smallest? (Notebook 2 answers.)
