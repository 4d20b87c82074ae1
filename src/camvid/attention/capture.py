"""Attention probabilities of chosen query pixels, captured during a normal forward or sampling call.

::

    from camvid.attention import capture

    with capture(method, layers=["*input_blocks.1.*"], queries=[(4, 20.5, 31.0)]) as maps:
        generate(method, cfg, batch, seed=0)           # or method.denoise(...), or any forward
    layer = maps[maps.layers[0]]
    layer.probs          # (timestep, head, query, frame, key_row, key_col) float32, on the CPU
    layer.registers      # (timestep, head, query, register)
    layer.mask           # (query, frame, key_row, key_col) bool: the keys the kernel let it see

Every cross-frame attention of the package runs through ``MultiHeadAttention.forward``, which hands
its projected ``q``, ``k`` and register keys to :func:`record` while a capture is active. Only the
chosen query rows are scored (one ``(heads, keys)`` row per query, in float32, SDPA's ``1/sqrt(d)``
scale); the mask rows (or a soft band's additive bias) come from the very form the kernel used (row
runs, neighbour lists or the dense mask, read after the kernel ran so that the capture never changes
which path a layer takes),
so the probabilities are those of the dense, block-sparse or any other path, at full size, and the
model's outputs stay bit-identical.

Axes. ``query``: the ``queries`` in order, each ``(frame, x, y)`` in pixels of the generated video
(``x`` right, ``y`` down, the geometry's convention) of batch row ``sample`` of the attention call
(with classifier-free guidance the conditional branch comes first, so ``sample=0`` is the first
conditional video); at each level the query is the feature cell holding ``(x, y)``. ``frame``: the
clip's T frames for ``epipolar`` / ``full3d`` / ``epipolar_ref`` (for ``epipolar_ref`` only the
reference frame is non-zero), the ``num_views - 1`` partner videos (their frame at the query's time)
for ``cross_video``. ``timestep``: one entry per denoiser call (``method.denoise``), labelled with
its ``t`` (``maps.timesteps``); ``timesteps=`` keeps only the calls whose ``t`` is listed. A capture
on a bare module (no ``denoise``) labels each forward call ``-1``.

A query row whose mask is empty in a model without registers gets no attention at all (the kernels
return 0 for it): its probabilities are all zero and ``layer.empty`` marks it.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

# the hook the attention modules call (camvid.attention.hooks), re-exported as this module's API
from camvid.attention.hooks import SESSIONS, active, record

__all__ = ["capture", "active", "record", "attention_layers", "query_position", "keys_to_grid", "Query",
           "LayerAttention", "AttentionMaps", "DIMS"]

DIMS = ("timestep", "head", "query", "frame", "key_row", "key_col")
# timestep label of a forward call made outside ``method.denoise``
NO_TIMESTEP = -1



@dataclass(frozen=True)
class Query:
    """A query pixel: ``frame`` of batch row ``sample``, at pixel ``(x, y)`` of the generated video."""

    frame: int
    x: float
    y: float
    sample: int = 0

    def cell(self, image_hw: tuple[int, int], feat_hw: tuple[int, int]) -> tuple[int, int]:
        """(row, col) of the ``feat_hw`` feature cell that holds the pixel."""
        H, W = image_hw
        h, w = feat_hw
        if not (0 <= self.x < W and 0 <= self.y < H):
            raise ValueError(f"query pixel (x={self.x}, y={self.y}) is outside the {W}x{H} video")
        return min(h - 1, int(self.y * h / H)), min(w - 1, int(self.x * w / W))


def _as_query(q, sample: int) -> Query:
    if isinstance(q, Query):
        return q
    if len(q) == 3:
        return Query(int(q[0]), float(q[1]), float(q[2]), sample)
    if len(q) == 4:
        return Query(int(q[1]), float(q[2]), float(q[3]), int(q[0]))
    raise ValueError(f"query {q!r}: give (frame, x, y), (sample, frame, x, y) or a Query")


def query_position(query: Query, variant: str, frames: int, feat_hw: tuple[int, int],
                   image_hw: tuple[int, int]) -> tuple[int, int, tuple[int, int]]:
    """(attention batch row, query token, (row, col) cell) of ``query`` in a layer of ``variant``.

    ``cross_video`` attends per (video, frame) row over the cells of a frame; the other variants per
    video over the frame-major cells of all its frames.
    """
    r, c = query.cell(image_hw, feat_hw)
    cell = r * feat_hw[1] + c
    if variant == "cross_video":
        return query.sample * frames + query.frame, cell, (r, c)
    return query.sample, query.frame * feat_hw[0] * feat_hw[1] + cell, (r, c)


def keys_to_grid(keys: torch.Tensor, variant: str, frames: int, feat_hw: tuple[int, int],
                 ref_frames: list[int] | None = None) -> torch.Tensor:
    """(Q, H, Lk) over an attention call's key tokens -> (Q, H, F, h, w) on the layer's key axis.

    ``epipolar_ref`` keys are the cells of each query's reference frame (``ref_frames``): they are
    placed at that frame of the clip, the other frames stay zero.
    """
    Q, Hs, _ = keys.shape
    h, w = feat_hw
    if variant != "epipolar_ref":
        return keys.reshape(Q, Hs, -1, h, w)
    if ref_frames is None or len(ref_frames) != Q:
        raise ValueError("epipolar_ref keys need the reference frame of every query")
    out = keys.new_zeros(Q, Hs, frames, h, w)
    for i, ref in enumerate(ref_frames):
        out[i, :, int(ref)] = keys[i].reshape(Hs, h, w)
    return out


@dataclass
class LayerAttention:
    """Captured attention of one layer; axes in :data:`DIMS` (``registers``: the first three + register)."""

    name: str
    variant: str  # epipolar | epipolar_ref | full3d | cross_video
    feat_hw: tuple[int, int]
    image_hw: tuple[int, int]
    key_axis: str  # "frame" (the clip's frames) or "view" (partner videos, cross_video)
    heads: list[int]
    timesteps: list[int]
    cells: torch.Tensor  # (query, 2) long: (row, col) of each query's feature cell
    probs: torch.Tensor  # (timestep, head, query, frame, key_row, key_col)
    registers: torch.Tensor  # (timestep, head, query, register)
    mask: torch.Tensor  # (query, frame, key_row, key_col) bool; all True for unmasked attention
    empty: torch.Tensor  # (query,) bool: no key and no register (the kernel outputs 0)

    @property
    def register_share(self) -> torch.Tensor:
        """(timestep, head, query): probability that goes to the register tokens."""
        return self.registers.sum(-1)

    def at_image(self) -> torch.Tensor:
        """``probs`` with the key cells spread over the video's pixels: (timestep, head, query, frame, H, W).

        Each pixel shows the probability of the key cell that covers it (feature maps divide the video).
        """
        H, W = self.image_hw
        h, w = self.feat_hw
        return self.probs.repeat_interleave(H // h, dim=-2).repeat_interleave(W // w, dim=-1)


@dataclass
class AttentionMaps:
    """Everything one :func:`capture` recorded, by layer name (in the model's module order)."""

    queries: list[Query]
    timesteps: list[int] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)
    _layers: dict[str, LayerAttention] = field(default_factory=dict, repr=False)

    def __getitem__(self, name: str) -> LayerAttention:
        if name not in self._layers:
            raise KeyError(f"no attention captured for layer {name!r}; captured: {', '.join(self.layers) or 'none'}")
        return self._layers[name]

    def __iter__(self):
        return iter(self._layers[n] for n in self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def _over_layers(self, tensors: list[torch.Tensor], heads: str) -> torch.Tensor:
        """Stack per-layer tensors whose axis 1 is the head: ``heads="each"`` keeps every head (all
        layers must have as many), ``"mean"`` averages them (axis kept, size 1). UNet levels of
        different widths have different head counts (the tiny UNet: 4 and 8)."""
        if heads not in ("each", "mean"):
            raise ValueError(f"heads={heads!r}: choose 'each' or 'mean'")
        if heads == "mean":
            return torch.stack([x.mean(1, keepdim=True) for x in tensors])
        counts = {layer.name: x.shape[1] for layer, x in zip(self, tensors)}
        if len(set(counts.values())) > 1:
            raise ValueError(f"the captured layers have different head counts ({counts}); stack them with "
                             "heads='mean' or select layers of one level")
        return torch.stack(tensors)

    def register_share(self, heads: str = "each") -> torch.Tensor:
        """(layer, timestep, head, query) register share of every captured layer (``heads``: see
        ``stack``)."""
        return self._over_layers([layer.register_share for layer in self], heads)

    def stack(self, heads: str = "each") -> torch.Tensor:
        """(layer, timestep, head, query, frame, H, W): every layer at the video's pixel grid.
        ``heads="each"`` needs one head count in all layers; ``"mean"`` averages the heads (size-1 axis)."""
        if not self.layers:
            raise ValueError("nothing was captured: no selected layer ran inside the capture")
        return self._over_layers([layer.at_image() for layer in self], heads)


def attention_layers(model: nn.Module) -> list[str]:
    """Names of the capturable attention modules of ``model``: the ``MultiHeadAttention`` inside every
    cross-frame module (``epipolar``, ``epipolar_ref``, ``full3d``, ``cross_video``), in module order."""
    return [name for name, _, _ in _find_layers(model)]


def _find_layers(model: nn.Module) -> list[tuple[str, nn.Module, nn.Module]]:
    from camvid.attention.variants import CrossVideoSyncModule, EpipolarBlock, MultiHeadAttention

    found = []
    for pname, parent in model.named_modules():
        if not isinstance(parent, (EpipolarBlock, CrossVideoSyncModule)):
            continue
        for cname, child in parent.named_modules():
            if isinstance(child, MultiHeadAttention) and cname:
                found.append((f"{pname}.{cname}" if pname else cname, child, parent))
    return found


def _select(found, layers) -> list[tuple[str, nn.Module, nn.Module]]:
    if layers is None:
        return found
    names = [n for n, _, _ in found]
    if isinstance(layers, (str, int)):
        layers = [layers]
    chosen: set[str] = set()
    for spec in layers:
        if isinstance(spec, int):
            if not -len(names) <= spec < len(names):
                raise ValueError(f"layers: index {spec} out of range; the model has {len(names)} attention layers")
            chosen.add(names[spec])
            continue
        hits = [n for n in names if n == spec or fnmatch.fnmatchcase(n, spec)]
        if not hits:
            raise ValueError(f"layers: {spec!r} matches no cross-frame attention layer; available: "
                             f"{', '.join(names) or 'none (the model has no cross-frame attention)'}")
        chosen.update(hits)
    return [entry for entry in found if entry[0] in chosen]


@dataclass
class _Layout:
    """What the cross-frame module's forward saw: the token layout behind its attention calls."""

    variant: str
    batch: int
    frames: int
    feat_hw: tuple[int, int]
    ctx: object


@dataclass
class _Pending:
    timestep_index: int
    logits: torch.Tensor  # (Q, H', Lk) float32
    reg_logits: torch.Tensor | None  # (Q, H', R)
    rows: list[int]  # attention batch row of each query
    tokens: list[int]  # query token of each query
    layout: _Layout
    cells: torch.Tensor
    num_keys: int
    ctx: object  # the call's AttentionContext (held only until the kernel has run)
    kind: str | None


class _Session:
    def __init__(self, selected, heads, timesteps, queries: list[Query], image_hw):
        self.heads = None if heads is None else [int(h) for h in heads]
        self.timestep_filter = None if timesteps is None else {int(t) for t in timesteps}
        self.queries = queries
        self.image_hw = None if image_hw is None else tuple(int(v) for v in image_hw)
        self.maps = AttentionMaps(queries=queries)
        self.by_module = {id(m): (name, parent) for name, m, parent in selected}
        self.order = [name for name, _, _ in selected]
        self.layouts: dict[int, _Layout] = {}
        self.pending: dict[int, _Pending] = {}
        self.steps: dict[str, dict[int, dict]] = {name: {} for name in self.order}
        self.info: dict[str, dict] = {}
        self.current: int | None = None  # index into maps.timesteps of the running call; None = skip
        self.call_seen = False
        self.handles = []

    # ------------------------------------------------------------------ call tracking
    def begin_call(self, t) -> None:
        self.call_seen = True
        label = NO_TIMESTEP if t is None else int(torch.as_tensor(t).reshape(-1)[0])
        if self.timestep_filter is not None and label not in self.timestep_filter:
            self.current = None
            return
        self.maps.timesteps.append(label)
        self.current = len(self.maps.timesteps) - 1

    def parent_pre_hook(self, parent, args, kwargs) -> None:
        x = args[0] if args else kwargs["x"]
        ctx = args[1] if len(args) > 1 else kwargs.get("ctx")
        feat_hw = args[2] if len(args) > 2 else kwargs["feat_hw"]
        B, T = x.shape[:2]
        self.layouts[id(parent)] = _Layout(parent.variant, B, T, tuple(int(v) for v in feat_hw), ctx)

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()  # inspection only: nothing joins the autograd graph of a training step
    def record(self, module, q, k, reg_k, ctx, kind) -> None:
        entry = self.by_module.get(id(module))
        if entry is None:
            return
        if not self.call_seen:  # a submodule called directly (not through denoise): one unlabelled call
            self.begin_call(None)
        if self.current is None:
            return
        name, parent = entry
        layout = self.layouts.get(id(parent))
        if layout is None:
            raise RuntimeError(f"attention layer {name} ran outside its cross-frame module's forward")
        N, Lq, H, D = q.shape
        heads = list(range(H)) if self.heads is None else self.heads
        bad = [h for h in heads if not 0 <= h < H]
        if bad:
            raise ValueError(f"heads: {bad} out of range; layer {name} has {H} heads")
        image_hw = self._image_hw(layout, name)
        rows, tokens, cells = self._query_tokens(layout, image_hw, name)
        if any(r >= N for r in rows) or any(t >= Lq for t in tokens):
            raise ValueError(f"layer {name}: a query falls outside the attention call ({N} rows x {Lq} queries)")
        hsel = torch.tensor(heads, device=q.device)
        scale = 1.0 / math.sqrt(D)  # SDPA's default, which every kernel uses
        logits, reg_logits = [], []
        for r, t in zip(rows, tokens):
            qv = q[r, t].index_select(0, hsel).float()  # (H', D)
            kv = k[r].index_select(1, hsel).float()  # (Lk, H', D)
            logits.append(torch.einsum("hd,lhd->hl", qv, kv) * scale)
            if reg_k is not None and reg_k.shape[2] > 0:
                rk = reg_k[0].index_select(0, hsel).float()  # (H', R, D)
                reg_logits.append(torch.einsum("hd,hrd->hr", qv, rk) * scale)
        self.pending[id(module)] = _Pending(
            self.current, torch.stack(logits), torch.stack(reg_logits) if reg_logits else None, rows, tokens,
            layout, cells, k.shape[1], ctx, kind)
        self.info[name] = {"variant": layout.variant, "feat_hw": layout.feat_hw, "image_hw": image_hw,
                           "heads": heads}

    def _image_hw(self, layout: _Layout, name: str) -> tuple[int, int]:
        ctx = layout.ctx
        if ctx is not None and getattr(ctx, "image_hw", None) is not None:
            return tuple(int(v) for v in ctx.image_hw)
        if self.image_hw is None:
            raise ValueError(f"layer {name} ran without cameras (no AttentionContext): pass "
                             "capture(..., image_hw=(H, W)) so the query pixels can be placed")
        return self.image_hw

    def _query_tokens(self, layout: _Layout, image_hw, name: str):
        rows, tokens, cells = [], [], []
        for qu in self.queries:
            if not 0 <= qu.sample < layout.batch:
                raise ValueError(f"query sample {qu.sample} is outside the batch of {layout.batch} of layer {name}")
            if not 0 <= qu.frame < layout.frames:
                raise ValueError(f"query frame {qu.frame} is outside the {layout.frames} frames of layer {name}")
            row, token, cell = query_position(qu, layout.variant, layout.frames, layout.feat_hw, image_hw)
            rows.append(row)
            tokens.append(token)
            cells.append(cell)
        return rows, tokens, torch.tensor(cells, dtype=torch.long)

    # ------------------------------------------------------------------ after the kernel
    @torch.no_grad()
    def finish(self, module) -> None:
        pending = self.pending.pop(id(module), None)
        if pending is None:
            return
        name, _ = self.by_module[id(module)]
        layout = pending.layout
        Q = len(pending.rows)
        mask, bias = self._mask_rows(pending.ctx, pending.kind, pending)  # (Q, Lk) or None each
        logits = pending.logits
        if bias is not None:  # soft band: an additive bias on the keys, none on the registers
            logits = logits + bias[:, None, :].to(logits.device)
        if mask is not None:
            logits = logits.masked_fill(~mask[:, None, :].to(logits.device), float("-inf"))
        parts = [logits] if pending.reg_logits is None else [pending.reg_logits, logits]
        full = torch.cat(parts, dim=-1)
        empty = torch.isinf(full).all(dim=-1)  # (Q, H'): no key at all (no registers, empty mask)
        probs = torch.softmax(full.masked_fill(empty[..., None], 0.0), dim=-1)
        probs = probs.masked_fill(empty[..., None], 0.0)
        R = 0 if pending.reg_logits is None else pending.reg_logits.shape[-1]
        reg, keys = probs[..., :R], probs[..., R:]
        grid_keys = self._to_grid(keys, layout, pending.rows)  # (Q, H', F, h, w)
        grid_mask = self._to_grid(torch.ones(Q, 1, pending.num_keys, dtype=torch.bool) if mask is None
                                  else mask[:, None].cpu(), layout, pending.rows)[:, 0]
        step = {"probs": grid_keys.transpose(0, 1).cpu(), "registers": reg.transpose(0, 1).cpu(),
                "mask": grid_mask, "empty": empty[:, 0].cpu(), "cells": pending.cells}
        steps = self.steps[name]
        if pending.timestep_index in steps:
            raise RuntimeError(f"layer {name} ran twice in one denoiser call; capture one call at a time")
        steps[pending.timestep_index] = step

    def _mask_rows(self, ctx, kind: str | None, p: _Pending) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(mask rows (Q, Lk) bool, additive bias rows (Q, Lk) float) of the queries, as the kernel used them.

        Called after the kernel, so the form it used (dense mask, soft-band bias, row runs or neighbour
        lists, all equal where they overlap) is in the context's cache; it is read from there. Only row
        runs are ever built here: building a dense mask could steer later layers onto another path.
        """
        if kind is None:
            return None, None
        feat_hw = tuple(p.layout.feat_hw)
        cached = ctx._cache  # camvid.attention.context memoises every form under (form, kind, feat_hw, ...)
        pairs = list(zip(p.rows, p.tokens))
        if ("bias", kind, feat_hw) in cached:
            bias = cached[("bias", kind, feat_hw)]
            return None, torch.stack([bias[r, t] for r, t in pairs]).float()
        if ("mask", kind, feat_hw) in cached or (ctx.mask_fn is not None and ctx.neighbors_fn is None):
            mask = ctx.mask(kind, feat_hw)
            return torch.stack([mask[r, t] for r, t in pairs]), None
        if ("runs", kind, feat_hw) in cached or ctx.uses_runs(kind, feat_hw):
            runs = ctx.runs(kind, feat_hw)
            return torch.stack([runs.rows(t, t + 1)[r, 0] for r, t in pairs]), None
        index, valid = ctx.neighbors(kind, feat_hw)
        out = torch.zeros(len(pairs), p.num_keys + 1, dtype=torch.bool, device=index.device)
        for i, (r, t) in enumerate(pairs):
            out[i, torch.where(valid[r, t], index[r, t], p.num_keys)] = True
        return out[:, : p.num_keys], None

    def _to_grid(self, keys: torch.Tensor, layout: _Layout, rows: list[int]) -> torch.Tensor:
        ref = None
        if layout.variant == "epipolar_ref":
            ref = layout.ctx.reference_index(layout.batch, torch.device("cpu"))[rows].tolist()
        return keys_to_grid(keys, layout.variant, layout.frames, layout.feat_hw, ref)

    # ------------------------------------------------------------------ result
    def build(self) -> AttentionMaps:
        maps = self.maps
        for name in self.order:
            steps = self.steps[name]
            if not steps:
                continue
            info = self.info[name]
            order = sorted(steps)
            first = steps[order[0]]
            R = first["registers"].shape[-1]
            maps.layers.append(name)
            maps._layers[name] = LayerAttention(
                name=name, variant=info["variant"], feat_hw=info["feat_hw"], image_hw=info["image_hw"],
                key_axis="view" if info["variant"] == "cross_video" else "frame", heads=info["heads"],
                timesteps=[maps.timesteps[i] for i in order], cells=first["cells"],
                probs=torch.stack([steps[i]["probs"] for i in order]),
                registers=torch.stack([steps[i]["registers"] for i in order]) if R else
                first["registers"].new_zeros(len(order), *first["registers"].shape[:2], 0),
                mask=first["mask"], empty=first["empty"])
        return maps


@contextlib.contextmanager
def capture(model: nn.Module, layers: Sequence[str | int] | str | None = None, heads: Iterable[int] | None = None,
            timesteps: Iterable[int] | None = None, queries: Sequence = (), sample: int = 0,
            image_hw: tuple[int, int] | None = None):
    """Record the attention probabilities of ``queries`` in the cross-frame attention of ``model``.

    ``layers``: names, glob patterns or indices into :func:`attention_layers` (default: all);
    ``heads``: head indices (default: all); ``timesteps``: keep only denoiser calls with these ``t``;
    ``queries``: ``(frame, x, y)`` pixels (or ``(sample, frame, x, y)``, or :class:`Query`), ``sample``
    the batch row of the 3-tuples; ``image_hw``: the video size, needed only for layers that run
    without cameras. Yields an :class:`AttentionMaps`, filled when the block exits.
    """
    queries = [_as_query(q, sample) for q in queries]
    if not queries:
        raise ValueError("capture needs queries=[(frame, x, y), ...]: the pixels whose attention to record")
    found = _find_layers(model)
    if not found:
        raise ValueError(f"{type(model).__name__} has no cross-frame attention (epipolar, epipolar_ref, full3d "
                         "or cross_video) to capture; a Plücker-only or temporal model has none")
    selected = _select(found, layers)
    session = _Session(selected, heads, timesteps, queries, image_hw)
    parents = {id(p): p for _, _, p in selected}
    for parent in parents.values():
        session.handles.append(parent.register_forward_pre_hook(session.parent_pre_hook, with_kwargs=True))
    for _, module, _ in selected:
        session.handles.append(module.register_forward_hook(lambda m, args, out: session.finish(m)))
    denoise = getattr(model, "denoise", None)
    if callable(denoise):
        def tracked_denoise(z_t, t, cond, *args, **kwargs):
            session.begin_call(t)
            return denoise(z_t, t, cond, *args, **kwargs)

        model.denoise = tracked_denoise  # instance attribute: removed on exit, the class method is untouched
    else:
        session.handles.append(model.register_forward_pre_hook(lambda m, args: session.begin_call(None)))
    SESSIONS.append(session)
    try:
        yield session.maps
    finally:
        SESSIONS.remove(session)
        for handle in session.handles:
            handle.remove()
        if callable(denoise):
            del model.denoise
        session.layouts.clear()  # drop the last contexts (their cached masks) with the session
        session.build()
