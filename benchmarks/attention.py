"""Speed and memory of camera masks and cross-frame attention, against the public CamI2V computation.

    python benchmarks/attention.py            # 256x256 and 512x320, 16 frames, every UNet level
    python benchmarks/attention.py --quick    # CI size: 256x256, 8 frames, levels 16x16 and below
    python benchmarks/attention.py --sizes 256x256 --levels 32x32 --parts attention   # one level
    python benchmarks/attention.py --parts coverage   # tokens no query or no key needs (no timing)

Masks: every builder runs in a fresh child process (``subprocess``); peak memory is the child's
resident-set high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``) during the call
minus its resident size before it. Times are the median of ``--repeat`` runs.

Attention: one child per (level, variant, mode) builds the module, the inputs and every path, then
times the paths round-robin ``--repeat`` times (a busy host slows all paths of a round alike) and
reports medians. Every ratio is taken against the PUBLIC reference measured in the same child:

- PUBLIC (CamI2V's ``EpipolarCrossAttention.efficient_forward``, written here): register tokens
  prepended to the context before ``to_k``/``to_v``, the boolean mask padded with True register
  columns, ONE ``F.scaled_dot_product_attention`` call with the (B, 1, L, R + L) bool mask for all
  heads. For ``epipolar_ref`` the same with the reference frame as context (CamI2V's
  ``only_on_cond_frame``: its ``Epipolar.forward`` cuts the reference frame's columns out of the
  level's full mask in every call, and so does this reference). For ``cross_video`` CVD's own computation (``EpiSelfAttention`` with
  ``EpiAttnProcessor``): per attention call a NaN check and in-place ``nan_to_num`` of the float
  attention map, diffusers' ``prepare_attention_mask`` repeating it for every head, separate
  ``to_q``/``to_k``/``to_v`` over the partner frames and ONE SDPA call with the (B*T, heads, hw, hw)
  float mask; the map carries our hard band (0 inside, the most negative float32 outside) and is
  built before timing (CVD rebuilds its soft map in every call: not counted). ``cross_video`` times
  the whole module (GroupNorm, ``proj_in``, two such attention blocks, feed-forward, ``proj_out``),
  ``cross_view`` one of its attention calls alone (frame t of each video onto frame t of its
  partner), the part the sparse kernel replaces: the module's feed-forward, norms and projections
  are most of its time and bound its speed-up. BOOL (second column, cross variants): the same
  layers with CamI2V's call, a (B*T, 1, hw, hw) bool mask in one SDPA call, which CVD's code does
  not make (the reference of earlier runs). The dense masks are built before timing, as the
  public code builds them once per batch.
- FLOAT (second column, epipolar only): the bool mask turned into a float additive bias and an
  explicit ``softmax(q k^T / sqrt(d) + bias) v``, heads one at a time (the earlier reference).
- ours: ``dense`` (SDPA per query chunk, mask rows expanded from the memoised row runs),
  ``sparse`` (block-sparse kernel of ``camvid.attention.blocksparse``; its plan is built before
  timing, once per forward and level, and its build time is listed), ``flex`` (FlexAttention, CUDA
  only unless ``--flex-cpu``), and ``unmasked`` (the same attention without a mask: full3d for
  ``epipolar``). ``projections``: the call's linear layers alone (the public code's three
  ``Linear`` calls and ``to_out``), no attention; ``projections_ours``: our module's fused
  projections (``MultiHeadAttention.project``) and ``to_out``, no attention. Public time / the
  latter bounds what any of our paths can reach. ``cross_video``: ``projections`` is the module
  without attention (CVD's layout, its norms, projections and feed-forward), and ``matmuls`` its 12
  matrix products alone on buffers made before timing, the floor of any float32 implementation.
  DENSITY LIMIT = unmasked time x the fraction of (query, key) pairs the sparse kernel
  computes; "vs limit" is sparse time / density limit. ATTENTION ALONE (forward, every variant but
  the whole ``cross_video`` module): our sparse kernel and the module's unmasked SDPA call on the
  same projected q and k/v, the projections left out; their kernel/limit is the kernel's own
  distance from the density limit.
- ALLOCATOR: one untimed round first (its outputs are compared, its peak memory reported, under
  glibc's defaults), then the timed rounds with the CPU allocator of the entry point that runs the
  mode (``camvid.allocator.DEFAULTS``): the forward as ``src/sample.py`` runs it, forward+backward as
  ``src/train.py`` (``--allocator`` fixes one for both).
"equal outputs": max |difference| of every path's output (and input gradient) to the public one; for
the attention-alone sparse kernel, to our dense masked attention on the same q and k/v.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch
from feedforward import three_ops  # benchmarks/feedforward.py: the gate as lvdm and diffusers write it

SIZES = {"256x256": (256, 256), "512x320": (320, 512)}  # name -> (H, W)


# ------------------------------------------------------------------------------------ memory probe
def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure_once(fn) -> tuple[float, int, object]:
    """Wall time of one call and its peak extra memory (CUDA: allocator peak; CPU: resident set)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status("VmRSS")
    t0 = time.perf_counter()
    result = fn()
    _sync()
    t = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available() else _status("VmHWM")) - before
    return t, peak, result


def measure(fn, repeat: int) -> tuple[float, int, object]:
    """Median wall time over ``repeat`` calls and the peak extra memory of the first call."""
    t, peak, result = measure_once(fn)
    times = [t] + [measure_once(fn)[0] for _ in range(repeat - 1)]
    return statistics.median(times), peak, result


# ------------------------------------------------------------------------------------ inputs
def cameras(T: int, image_hw: tuple[int, int], seed: int = 0):
    """A RealEstate10K-like clip: forward/sideways translation with a slow yaw, as in the test set."""
    g = torch.Generator().manual_seed(seed)
    H, W = image_hw
    K = torch.tensor([[0.9 * W, 0.0, W / 2], [0.0, 0.9 * W, H / 2], [0.0, 0.0, 1.0]]).expand(1, T, 3, 3).contiguous()
    c2w = torch.eye(4).repeat(1, T, 1, 1)
    d = torch.randn(3, generator=g)
    d = d / d.norm()
    yaw = (float(torch.rand(1, generator=g)) - 0.5) * 0.6
    for t in range(T):
        a = yaw * t / T
        c2w[0, t, :3, :3] = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
        c2w[0, t, :3, 3] = d * 0.1 * t
    return K, c2w


def with_kernel(mode: str, fn):
    """``fn`` run with ``CAMVID_SPARSE_KERNEL=mode`` (the sparse path's forward kernel, read at every call)."""
    def run():
        old = os.environ.get("CAMVID_SPARSE_KERNEL")
        os.environ["CAMVID_SPARSE_KERNEL"] = mode
        try:
            return fn()
        finally:
            if old is None:
                os.environ.pop("CAMVID_SPARSE_KERNEL")
            else:
                os.environ["CAMVID_SPARSE_KERNEL"] = old
    return run


def view_cameras(K, c2w, views: int):
    """``cameras``' clip as ``views`` videos (cross_video's batch): the same cameras, the second video
    (the partner) shifted sideways by 0.2."""
    Kb, c2wb = K.repeat(views, 1, 1, 1), c2w.repeat(views, 1, 1, 1)
    if views > 1:
        c2wb[1, :, :3, 3] += torch.tensor([0.2, 0.0, 0.0])
    return Kb, c2wb


def randomize_zero_parameters(module):
    """N(0, 0.02) values for the module's zero-initialised parameters (its output layers), so that its
    output depends on its attention and "equal outputs" means something; returns the module."""
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.normal_(0, 0.02)
    return module


def naive_mask(K, c2w, image_hw, feat_hw):
    """CamI2V's get_epipolar_mask: a dense float distance tensor, then a threshold."""
    H, W = image_hw
    h, w = feat_hw
    ds_y, ds_x = H / h, W / w
    rel = torch.linalg.inv(c2w)[:, None] @ c2w[:, :, None]  # (B, T1, T2, 4, 4): camera T1 -> camera T2
    R, t = rel[..., :3, :3], rel[..., :3, 3:4]
    E = torch.cross(t.expand_as(R), R, dim=-2)
    F = torch.linalg.inv(K)[:, None].transpose(-1, -2) @ E @ torch.linalg.inv(K)[:, :, None]
    ys = (torch.arange(h) + 0.5) * ds_y
    xs = (torch.arange(w) + 0.5) * ds_x
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([gx, gy, torch.ones_like(gx)], -1).view(-1, 3)
    lines = F @ grid.T  # (B, T1, T2, 3, hw)
    lines = lines / lines[..., :2, :].norm(dim=-2, keepdim=True)
    dist = (lines.transpose(-1, -2) @ grid.T).abs()  # (B, T1, T2, hw, hw) float
    mask = dist <= math.hypot(ds_x, ds_y) / 2
    return mask.permute(0, 1, 3, 2, 4).reshape(K.shape[0], T_of(K) * h * w, T_of(K) * h * w)


def T_of(K):
    return K.shape[1]


def naive_attention(x, attn, mask):
    """CamI2V's EpipolarCrossAttention with the mask as a float bias, heads one at a time."""
    B, L, C = x.shape
    H, D, R = attn.heads, attn.dim_head, attn.num_register_tokens
    context = torch.cat([attn.register_tokens.expand(B, -1, -1), x], 1) if R else x
    q, k, v = attn.to_q(x), attn.to_k(context), attn.to_v(context)
    bias = torch.zeros(B, 1, L, R + L, device=x.device).masked_fill(~torch.nn.functional.pad(mask, (R, 0), value=True)[:, None],
                                                   float("-inf"))
    outs = []
    for i in range(H):
        sl = slice(i * D, (i + 1) * D)
        s = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(D) + bias[:, 0]
        outs.append(torch.softmax(s, -1) @ v[..., sl])
    return attn.to_out(torch.cat(outs, -1))


def public_attention(x, context, attn, mask):
    """CamI2V's ``EpipolarCrossAttention.efficient_forward``: registers prepended to the context,
    bool mask padded with True register columns, one SDPA call for all heads."""
    B, L, C = x.shape
    H, R = attn.heads, attn.num_register_tokens
    q = attn.to_q(x)
    if R:
        context = torch.cat([attn.register_tokens.repeat(B, 1, 1), context], dim=1)
    k, v = attn.to_k(context), attn.to_v(context)
    mask = torch.nn.functional.pad(mask, (R, 0), value=True)
    q, k, v = (t.view(B, t.shape[1], H, -1).transpose(1, 2) for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask.unsqueeze(1))
    return attn.to_out(out.transpose(1, 2).reshape(B, L, -1))


def public_ref_attention(x, attn, full_mask, cond):
    """CamI2V's ``Epipolar.forward`` with ``only_on_cond_frame``: the reference frame's tokens (an
    indexed copy) as the context, the level's full (B, L, L) mask cut to the reference frame's
    columns in the call (``rearrange`` to (B, L, T, hw), indexed at ``cond_frame_index``), then
    ``efficient_forward`` (``public_attention``). x (B, T, hw, C) -> (B, T * hw, C)."""
    B, T, hw, C = x.shape
    rows = torch.arange(B, device=x.device)
    context = x[rows, cond]
    mask = full_mask.view(B, full_mask.shape[1], T, hw)[rows, :, cond]
    return public_attention(x.reshape(B, T * hw, C), context, attn, mask)


def public_cvd_attention(x, partner, attn, bias_map):
    """CVD's ``EpiSelfAttention.forward`` + ``EpiAttnProcessor.forward`` for one attention call.

    ``bias_map`` (N, Lq, Lk) float is the additive map CVD's ``pos_encoder.get_attn_map`` returns
    (built before timing, as our masks are; CVD rebuilds it in every call). Here it carries our hard
    band (0 inside, the most negative float32 outside; CVD's ``nan_to_num`` would turn -inf into 0),
    so the output equals ours; the work per call does not depend on the values: the NaN check and
    in-place ``nan_to_num`` of the map, diffusers' ``prepare_attention_mask`` (the map repeated for
    every head, ``repeat_interleave(heads, dim=0)``), separate ``to_q``/``to_k``/``to_v``, one SDPA
    call with the (N, heads, Lq, Lk) float mask, ``to_out``. A query with no key in the band gets
    the mean of the values here (every bias equal) and 0 in ours."""
    N, L, _ = x.shape
    H = attn.heads
    torch.isnan(bias_map).any()  # CVD: ``if torch.isnan(attention_mask).any(): print(...)``
    torch.nan_to_num(bias_map, nan=0.0, posinf=0.0, neginf=0.0, out=bias_map)
    m = bias_map.repeat_interleave(H, dim=0).view(N, H, L, bias_map.shape[-1])
    q, k, v = attn.to_q(x), attn.to_k(partner), attn.to_v(partner)
    q, k, v = (t.view(N, t.shape[1], H, -1).transpose(1, 2) for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m)
    return attn.to_out(out.transpose(1, 2).reshape(N, L, -1))


def diffusers_feed_forward(ff, x):
    """diffusers' ``FeedForward`` with ``GEGLU`` (CVD's): ``net.0.proj``, ``h * gelu(gate)`` in three
    ops (``benchmarks/feedforward.py``), ``net.2``, with our module's weights (ours computes the gate in
    one autograd function)."""
    return ff.net[2](three_ops(ff.net[0].proj(x)))


def public_cvd_module(x, module, views, attend):
    """CVD's ``EpiTransformer3DModel`` forward with our module's weights (the same GroupNorm,
    ``proj_in``, LayerNorms, diffusers' feed-forward, ``proj_out``): each attention block gathers the
    partner frames (``hidden_states[kv_index]``) and calls ``attend(queries, partner frames, block)``
    (``public_cvd_attention`` for CVD's call, ``projections_only`` for the module without attention)."""
    B, T, hw, C = x.shape
    et = module.epi_transformer
    rows = torch.arange(B, device=x.device).view(B // views, views).roll(-1, dims=1).flatten()
    kv_index = (rows[:, None] * T + torch.arange(T, device=x.device)).flatten()
    h = et.norm(x.reshape(B * T, hw, C).transpose(1, 2)).transpose(1, 2)
    h = et.proj_in(h)
    for block in et.transformer_blocks:
        for attn, norm in zip(block.attention_blocks, block.norms):
            n = norm(h)
            h = h + attend(n, n[kv_index], attn)
        h = h + diffusers_feed_forward(block.ff, block.ff_norm(h))
    return et.proj_out(h).view(B, T, hw, C)


def module_matmuls(module, rows: int, backward: bool):
    """The ``cross_video`` module's matrix products alone, as a call: ``proj_in``, per attention block
    ``to_q``, ``to_k``, ``to_v``, ``to_out``, the feed-forward's two, ``proj_out`` (12 products of
    ``rows`` tokens with the module's weights; with ``backward`` each also gives its input and weight
    gradients, two more products). Every operand and result lives in a buffer made here, before
    timing: no norms, activations, copies, gathers or allocations, so public time / this time bounds
    the speed-up of ANY float32 implementation of the module on this machine."""
    et = module.epi_transformer
    layers = [et.proj_in]
    for block in et.transformer_blocks:
        for attn in block.attention_blocks:
            layers += [attn.to_q, attn.to_k, attn.to_v, attn.to_out[0]]
        layers += [block.ff.net[0].proj, block.ff.net[2]]
    layers.append(et.proj_out)
    weights = [lin.weight.detach() for lin in layers]
    g = torch.Generator(device=weights[0].device).manual_seed(2)
    buffers: dict = {}

    def buf(*shape):  # one buffer per (use, shape), filled before timing (its pages are touched)
        if shape not in buffers:
            buffers[shape] = torch.randn(*shape[1:], generator=g, device=weights[0].device)
        return buffers[shape]

    def run():
        for w in weights:
            n_out, n_in = w.shape
            a, y = buf("in", rows, n_in), buf("out", rows, n_out)
            torch.mm(a, w.t(), out=y)
            if backward:  # y stands for the incoming gradient: it has its shape
                torch.mm(y, w, out=buf("grad_in", rows, n_in))
                torch.mm(y.t(), a, out=buf("grad_w", n_out, n_in))
        return y

    run()  # every buffer made now
    run.buffers = buffers
    return run


def band_bias(mask: torch.Tensor) -> torch.Tensor:
    """Our bool band as CVD's float map: 0 inside, the most negative float32 outside."""
    return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill_(
        ~mask, torch.finfo(torch.float32).min)


def projections_only(x, context, attn):
    """The call's linear layers (to_q, to_k, to_v over registers + context, to_out) without the
    attention: every path pays this, so public time / this time bounds any path's speed-up."""
    B, R = x.shape[0], attn.num_register_tokens
    if R:
        context = torch.cat([attn.register_tokens.repeat(B, 1, 1), context], dim=1)
    q, k, v = attn.to_q(x), attn.to_k(context), attn.to_v(context)
    return attn.to_out(q) + 0 * (k.mean() + v.mean())  # k and v stay in the graph (their backward too)


def projections_ours(x, context, attn):
    """Our module's projections alone (``MultiHeadAttention.project``: ``to_q``, and one GEMM for k
    and v over [registers, context]) and ``to_out``: the bound on our paths."""
    q, kv = attn.project(x, context)
    return attn.to_out(q.reshape(*x.shape[:2], -1)) + 0 * kv.mean()


# ------------------------------------------------------------------------------------ one case
def run_case(spec: dict) -> dict:
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    from camvid.geometry import epipolar as geo

    H, W = spec["image_hw"]
    h, w = spec["feat_hw"]
    T = spec["frames"]
    K, c2w = cameras(T, (H, W))
    what, rep = spec["what"], spec["repeat"]
    out: dict = {}
    if what == "mask_naive":
        t, mem, m = measure(lambda: naive_mask(K, c2w, (H, W), (h, w)), rep)
        ours = geo.epipolar_mask(K, c2w, (H, W), (h, w)).reshape(m.shape)
        out = {"time": t, "mem": mem, "density": m.float().mean().item(),
               "agree": (m == ours).float().mean().item()}
    elif what == "mask_dense":
        t, mem, m = measure(lambda: geo.epipolar_mask(K, c2w, (H, W), (h, w)), rep)
        out = {"time": t, "mem": mem, "density": m.float().mean().item()}
    elif what == "mask_sparse":
        t, mem, _ = measure(lambda: geo.epipolar_neighbors(K, c2w, (H, W), (h, w)), rep)
        out = {"time": t, "mem": mem}
    elif what == "mask_runs":
        t, mem, r = measure(lambda: geo.epipolar_runs(K, c2w, (H, W), (h, w)), rep)
        size = sum(x.numel() * x.element_size() for x in (r.start, r.end))
        out = {"time": t, "mem": mem, "note": f"output {size / 2**20:.0f} MiB ({r.start.dtype} start/end)"}
    elif what == "coverage":
        out = coverage(spec, K, c2w)
    else:
        out = attention_level(spec, K, c2w)
    return out


def coverage(spec: dict, K, c2w) -> dict:
    """Per mask kind: which tokens any path must project. A key no query sees needs no k/v, a query
    with no key (and no register) needs no q: its output is 0 (see camvid.attention.kernels)."""
    from camvid.attention import AttentionContext

    H, W = spec["image_hw"]
    h, w = spec["feat_hw"]
    out = {}
    for kind, B in (("all", 1), ("ref", 1), ("cross", 2)):
        Kb, c2wb = view_cameras(K, c2w, B)
        ctx = AttentionContext(K=Kb, c2w=c2wb, image_hw=(H, W), cond_index=torch.zeros(B, dtype=torch.long),
                               num_views=B, path="dense")
        runs = ctx.runs(kind, (h, w))
        N, Lq = runs.start.shape[:2]
        seen = torch.zeros(N, runs.start.shape[2] * h * w, dtype=torch.bool)
        empty_rows = 0
        for q0 in range(0, Lq, 1024):  # the bool rows a chunk at a time (the whole mask need not exist)
            rows = runs.rows(q0, min(Lq, q0 + 1024))
            seen |= rows.any(1)
            empty_rows += int((~rows.any(-1)).sum())
        out[kind] = {"queries": N * Lq, "keys": seen.numel(), "unseen_keys": int((~seen).sum()),
                     "empty_rows": empty_rows}
    return out


def attention_level(spec: dict, K, c2w) -> dict:
    """All paths of one variant at one level, timed round-robin in this process (see module doc)."""
    from camvid.attention import AttentionContext, build_cross_frame_attention, cpu_kernel

    H, W = spec["image_hw"]
    h, w = spec["feat_hw"]
    T, C, heads = spec["frames"], spec["dim"], spec["heads"]
    variant, mode, rep = spec["variant"], spec["mode"], spec["repeat"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cross = variant in ("cross_video", "cross_view")
    views = 2 if cross else 1
    B = views
    Kb, c2wb = (t.to(device) for t in view_cameras(K, c2w, B))
    kind = {"epipolar": "all", "epipolar_ref": "ref", "cross_video": "cross", "cross_view": "cross"}[variant]
    kw = {"norm_num_groups": 32} if cross else {}
    module = randomize_zero_parameters(build_cross_frame_attention("cross_video" if cross else variant, C, heads,
                                                                   **kw).to(device))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, h * w, C, generator=g).to(device)
    if variant == "cross_view":  # one attention block of the module: queries (B*T, hw, C), partner frames as keys
        attn_block = module.epi_transformer.transformer_blocks[0].attention_blocks[0]
        partner = x.roll(-1, dims=0).reshape(B * T, h * w, C)  # V = 2: each video's partner is the other one
        x = x.reshape(B * T, h * w, C)
    x.requires_grad_(mode == "fwdbwd")
    cond = torch.zeros(B, dtype=torch.long, device=device)
    # the sparse path's forward runs on the compiled kernel (CPU, float32, where it builds), else the fused one
    compiled = cpu_kernel.serves(device, x.dtype)

    def ctx_for(path, **extra):
        return AttentionContext(K=Kb, c2w=c2wb, image_hw=(H, W), cond_index=cond, num_views=views, path=path, **extra)

    calls, notes = {}, {}
    skip_public = spec.get("skip_public", False)
    if not skip_public:
        public_ctx = ctx_for("dense")
        # the dense bool mask, built before timing; for epipolar_ref the level's full mask, as CamI2V
        # keeps it (``sample_locs_dict``), its reference-frame columns sliced out in every call
        mask = public_ctx.mask("all" if variant == "epipolar_ref" else kind, (h, w))
    if skip_public:
        pass
    elif variant == "cross_view":
        bias_map = band_bias(mask)
        calls["public"] = lambda: public_cvd_attention(x, partner, attn_block, bias_map)
        calls["public_bool"] = lambda: public_attention(x, partner, attn_block, mask)
        calls["unmasked"] = lambda: attn_block(x, partner)
        calls["projections"] = lambda: projections_only(x, partner, attn_block)
        calls["projections_ours"] = lambda: projections_ours(x, partner, attn_block)
        notes["projections"] = "public layers, no attention: bounds the public path"
        notes["projections_ours"] = "our fused projections, no attention: bounds our paths"
    elif variant == "cross_video":
        bias_map = band_bias(mask)
        calls["public"] = lambda: public_cvd_module(
            x, module, views, lambda n, p, a: public_cvd_attention(n, p, a, bias_map))
        calls["public_bool"] = lambda: module(x, public_ctx, (h, w))
        calls["projections"] = lambda: public_cvd_module(x, module, views, projections_only)
        notes["projections"] = ("CVD's layers without attention (norms, projections, diffusers' feed-forward): "
                                "bounds the public path")
        calls["matmuls"] = module_matmuls(module, B * T * h * w, backward=mode == "fwdbwd")
        notes["matmuls"] = ("the module's 12 matrix products alone (forward+backward: and their input and weight "
                            "gradients) on buffers made before timing: bounds any float32 implementation here")
        open_ctx = ctx_for("dense", mask_fn=lambda c, k_, fh: torch.ones_like(mask))
        calls["unmasked"] = lambda: module(x, open_ctx, (h, w))
        notes["unmasked"] = "all-True mask"
    else:
        attn = module.epipolar_attn
        tokens = x.reshape(1, T * h * w, C)
        context = tokens if variant == "epipolar" else x[:, 0]
        if variant == "epipolar_ref":
            calls["public"] = lambda: public_ref_attention(x, attn, mask, cond).view_as(x)
        else:
            calls["public"] = lambda: public_attention(tokens, context, attn, mask).view_as(x)
        calls["unmasked"] = lambda: attn(tokens, context).view_as(x)
        calls["projections"] = lambda: projections_only(tokens, context, attn).view_as(x)
        calls["projections_ours"] = lambda: projections_ours(tokens, context, attn).view_as(x)
        notes["projections"] = "public layers, no attention: bounds the public path"
        notes["projections_ours"] = "our fused projections, no attention: bounds our paths"
        if variant == "epipolar" and spec.get("float_ref", True):
            calls["float"] = lambda: naive_attention(tokens, attn, mask).view_as(x)
    ours = {}
    for path in spec["paths"]:
        ctx = ctx_for(path)
        if path in ("dense", "sparse", "flex"):
            ctx.runs(kind, (h, w))  # masks are memoised per forward: built before timing
        if path == "sparse":
            from camvid.attention.blocksparse import forward_padding, prepare_plan

            regs = 0 if cross else module.epipolar_attn.num_register_tokens
            pad = (lambda width: -width % cpu_kernel.LANES) if compiled else forward_padding
            t0 = time.perf_counter()
            with torch.set_grad_enabled(spec["mode"] == "fwdbwd"):  # as the entry points build it
                plan = ctx.tile_plan(kind, (h, w))
            prepare_plan(plan, regs, x.dtype)  # the per-chunk biases belong to the plan's cost
            plan_time = time.perf_counter() - t0
            runs = ctx.runs(kind, (h, w))
            density = float((runs.end.long() - runs.start.long()).clamp(min=0).sum()) / (
                runs.start.shape[0] * runs.num_queries * runs.start.shape[2] * h * w)
            q_tile = plan.chunks[0].query_ids.shape[1]
            aligned = sum(c.shape[0] * c.shape[1] * pad(regs + c.shape[2]) for c in plan.chunks) / (
                plan.batch * plan.num_queries * plan.num_keys)
            notes["sparse"] = (f"plan {plan_time:.2f}s (once per level and training step, shared by the level's "
                               f"layers, not in the time); computes {100 * plan.computed_fraction:.1f}% of pairs "
                               f"(mask density {100 * density:.1f}%, {q_tile}-query tiles, {len(plan.chunks)} chunks; "
                               f"the forward adds {100 * aligned:.2f}% as masked alignment slots, not in the limit; "
                               f"forward kernel: {'compiled' if compiled else 'fused'})")
            ours["fraction"] = plan.computed_fraction
            ours["plan_time"] = plan_time
        if path == "flex":
            regs = 0 if cross else module.epipolar_attn.num_register_tokens
            fbm = ctx.flex_block_mask(kind, (h, w), regs)
            notes["flex"] = f"block sparsity {100 * fbm.sparsity:.1f}%"
            ours["block_sparsity"] = fbm.sparsity
        if variant == "cross_view":
            calls[path] = (lambda c=ctx: attn_block(x, partner, c, "cross", (h, w)))
        else:
            calls[path] = (lambda c=ctx: module(x, c, (h, w)))

    if "sparse" in calls and compiled:  # the same path, plan and inputs with PyTorch's fused kernel forward
        calls["sparse_fused"] = with_kernel("fused", calls["sparse"])
        notes["sparse_fused"] = "CAMVID_SPARSE_KERNEL=fused: the same plan, the fused kernel's forward"

    if "sparse" in spec["paths"] and variant != "cross_video" and mode == "fwd":
        # the attention alone, on the same projected q and k/v: our sparse kernel and unmasked SDPA (the
        # module's unmasked call); their ratio, against the fraction of pairs computed, is the kernel's
        # own distance from the density limit (the projections, which do not shrink with the mask, left out)
        from camvid.attention.sparse import tiled_sparse_attention_packed

        blk = attn_block if variant == "cross_view" else module.epipolar_attn
        with torch.no_grad():  # and the kernel's "diff" against our dense masked attention on the same q, k/v
            qa, kva = blk.project(x, partner) if variant == "cross_view" else blk.project(tokens, context)
            kernel_ref = blk._attend(qa, kva, ctx_for("dense"), kind, (h, w))
        kplan, regs_k = plan, blk.num_register_tokens  # the module's sparse path's plan (built above)
        calls["kernel_sparse"] = lambda: tiled_sparse_attention_packed(qa, kva, kplan, regs_k)
        if compiled:  # the same kernel call with the fused forward
            calls["kernel_sparse_fused"] = with_kernel("fused", calls["kernel_sparse"])
        calls["kernel_unmasked"] = lambda: torch.nn.functional.scaled_dot_product_attention(
            qa.transpose(1, 2), kva[:, :, 0].transpose(1, 2), kva[:, :, 1].transpose(1, 2))
        notes["kernel_unmasked"] = "the module's unmasked attention call alone (no projections)"

    def step(name, fn):
        def run():
            if mode == "fwd" or name == "matmuls":  # the matrix products make their own gradients
                with torch.no_grad():
                    return fn(), None
            x.grad = None
            y = fn()
            y.square().mean().backward()
            return y.detach(), x.grad.clone()
        return run

    times = {name: [] for name in calls}
    mems, outs = {}, {}
    for name, fn in calls.items():  # round 0: outputs and peak memory under glibc's defaults, not timed
        _, mems[name], outs[name] = measure_once(step(name, fn))
    if timed_allocator(spec) == "reuse":
        from camvid.allocator import reuse_freed_memory

        reuse_freed_memory()  # freed blocks kept for the next tensors (camvid.allocator)
    for _ in range(rep):
        for name, fn in calls.items():
            times[name].append(measure_once(step(name, fn))[0])
    result = {"paths": {}}
    for name in calls:
        ref_y, ref_g = (kernel_ref, None) if name.startswith("kernel_sparse") else outs.get("public", (None, None))
        y, gx = outs[name]
        diff = float("nan") if ref_y is None or y.shape != ref_y.shape else float((y - ref_y).abs().max())
        if gx is not None and ref_g is not None:
            diff = max(diff, float((gx - ref_g).abs().max()))
        result["paths"][name] = {"time": statistics.median(times[name]), "mem": mems[name], "diff": diff,
                                 "note": notes.get(name, "")}
    result.update(ours)
    return result


def timed_allocator(spec: dict) -> str:
    """The CPU allocator setting of a case's timed rounds: ``--allocator``, or for ``entry`` the default
    of the entry point that runs the mode (forward: ``src/sample.py``; forward+backward: ``src/train.py``)."""
    from camvid.allocator import DEFAULTS

    allocator = spec.get("allocator", "entry")
    if allocator == "entry":
        allocator = DEFAULTS["sample" if spec.get("mode", "fwd") == "fwd" else "train"]
    return allocator


# ------------------------------------------------------------------------------------ driver
def child(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--case", json.dumps(spec)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout {timeout:.0f}s"}
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": tail[:120]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def levels(image_hw, n):
    h, w = image_hw[0] // 8, image_hw[1] // 8
    return [(h >> i, w >> i) for i in range(n)]


def fmt_mem(b):
    return f"{b / 2**20:8.1f} MiB"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI size: 256x256, 8 frames, 16x16 level and below")
    ap.add_argument("--sizes", nargs="*", default=None, choices=list(SIZES))
    ap.add_argument("--levels", nargs="*", default=None, help="only these levels, e.g. 32x32 40x64 (h x w)")
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--dim", type=int, default=320, help="channels (DynamiCrafter level 0: 320, 5 heads)")
    ap.add_argument("--heads", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="timed rounds per path (median reported)")
    ap.add_argument("--allocator", default="entry", choices=["entry", "reuse", "system"],
                    help="CPU memory of the timed rounds: reuse (freed blocks kept for the next tensors, "
                         "camvid.allocator), system (glibc's defaults), or entry (default): as the entry point "
                         "that runs the mode, src/sample.py's setting for the forward, src/train.py's for "
                         "forward+backward")
    ap.add_argument("--bwd-repeat", type=int, default=None,
                    help="timed rounds for forward+backward (default: --repeat)")
    ap.add_argument("--variants", nargs="*", default=["epipolar", "epipolar_ref", "cross_video", "cross_view"],
                    choices=["epipolar", "epipolar_ref", "cross_video", "cross_view"],
                    help="cross_view: one attention call of the cross_video module alone")
    ap.add_argument("--paths", nargs="*", default=None, choices=["dense", "sparse", "flex"],
                    help="our paths to time (default: dense sparse, plus flex on CUDA)")
    ap.add_argument("--flex-cpu", action="store_true", help="also time FlexAttention on the CPU (torch.compile)")
    ap.add_argument("--modes", nargs="*", default=["fwd", "fwdbwd"], choices=["fwd", "fwdbwd"])
    ap.add_argument("--max-cost", type=float, default=4e11,
                    help="skip public/dense/unmasked paths whose dense score work (L*Lk*C*4 flops) exceeds this")
    ap.add_argument("--max-naive-bytes", type=float, default=8e9, help="skip the float reference above this")
    ap.add_argument("--parts", nargs="*", default=["masks", "attention"], choices=["masks", "attention", "coverage"],
                    help="measure mask building, attention, or both; coverage: count the keys no query sees and "
                         "the queries with no key (tokens that would need no projection; no timing)")
    ap.add_argument("--out", default=None, help="also write the tables to this markdown file")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    if args.out:
        sys.stdout = _Tee(args.out)

    sizes = args.sizes or (["256x256"] if args.quick else list(SIZES))
    T = args.frames or (8 if args.quick else 16)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    paths = args.paths or (["dense", "sparse", "flex"] if device == "cuda" or args.flex_cpu else ["dense", "sparse"])
    print(f"# command: python benchmarks/attention.py {' '.join(sys.argv[1:])}".rstrip())
    allocators = (f"forward {timed_allocator({'mode': 'fwd'})}, forward+backward {timed_allocator({'mode': 'fwdbwd'})} "
                  "(as the entry points)" if args.allocator == "entry" else args.allocator)
    print(f"# torch {torch.__version__}, {device}, {args.threads} threads, T={T}, C={args.dim}, heads={args.heads}, "
          f"B=1 (cross_video: one pair, B=2); time = median of {args.repeat} rounds (forward+backward: "
          f"{args.bwd_repeat or args.repeat}) after an untimed round; memory = peak extra "
          f"{'CUDA allocation' if device == 'cuda' else 'RSS'} of the untimed call (glibc's defaults); CPU allocator "
          f"of the timed rounds: {allocators}; load average at start "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for size in sizes:
        image_hw = SIZES[size]
        lv = levels(image_hw, 4)
        if args.quick:
            lv = lv[1:]
        if args.levels:
            lv = [f for f in lv if f"{f[0]}x{f[1]}" in args.levels]
        for feat_hw in lv:
            hw = feat_hw[0] * feat_hw[1]
            L = T * hw
            base = {"image_hw": image_hw, "feat_hw": feat_hw, "frames": T, "dim": args.dim, "heads": args.heads,
                    "threads": args.threads, "repeat": args.repeat, "allocator": args.allocator}
            print(f"\n## {size} level {feat_hw[0]}x{feat_hw[1]} (L = {L} tokens)")
            if "coverage" in args.parts:
                coverage_table(base, args)
            if "masks" in args.parts:
                mask_table(base, T, hw, args)
            if "attention" in args.parts:
                attention_table(base, L, feat_hw, paths, args)
            sys.stdout.flush()


class _Tee:
    def __init__(self, path):
        self.file = open(path, "w")
        self.stdout = sys.__stdout__

    def write(self, text):
        self.stdout.write(text)
        self.file.write(text)

    def flush(self):
        self.stdout.flush()
        self.file.flush()


def coverage_table(base: dict, args) -> None:
    res = child({**base, "what": "coverage"}, args.timeout)
    print("| mask kind | query tokens x key tokens (all samples) | keys no query sees | queries with no key |")
    print("|---|---|---|---|")
    if "error" in res:
        print(f"| all | - | - | {res['error']} |")
        return
    for kind, r in res.items():
        label = {"all": "all (epipolar)", "ref": "ref (epipolar_ref: keys = the reference frame)",
                 "cross": "cross (cross_video / cross_view: keys = the partner's frames)"}[kind]
        print(f"| {label} | {r['queries']} x {r['keys']} (all samples) | {r['unseen_keys']} "
              f"({100 * r['unseen_keys'] / r['keys']:.2f}%) | {r['empty_rows']} "
              f"({100 * r['empty_rows'] / r['queries']:.2f}%) |")
    print()


def mask_table(base: dict, T: int, hw: int, args) -> None:
    res = {}
    naive_bytes = 2 * T * T * hw * hw * 4  # the float distances and their abs() coexist
    for what in ("mask_naive", "mask_dense", "mask_sparse", "mask_runs"):
        if what == "mask_naive" and naive_bytes > args.max_naive_bytes:
            res[what] = {"error": f"skipped: float distances need {naive_bytes / 1e9:.1f} GB > --max-naive-bytes"}
        else:
            res[what] = child({**base, "what": what}, args.timeout)
    print("| mask build | time (s) | peak extra RSS | vs naive time | vs naive memory | note |")
    print("|---|---|---|---|---|---|")
    nv = res["mask_naive"]
    for what, label in (("mask_naive", "naive (CamI2V float distances)"),
                        ("mask_dense", "ours dense epipolar_mask"),
                        ("mask_sparse", "ours epipolar_neighbors"),
                        ("mask_runs", "ours epipolar_runs (compact)")):
        r = res[what]
        if "error" in r:
            print(f"| {label} | - | - | - | - | {r['error']} |")
            continue
        ratio_t = f"{nv['time'] / r['time']:.1f}x" if "time" in nv else "-"
        ratio_m = f"{nv['mem'] / max(r['mem'], 1):.1f}x" if "mem" in nv else "-"
        note = f"density {r['density']:.3f}" if "density" in r else r.get("note", "")
        if "agree" in r:
            note += f", agrees with ours on {100 * r['agree']:.3f}% of entries"
        print(f"| {label} | {r['time']:.3f} | {fmt_mem(r['mem'])} | {ratio_t} | {ratio_m} | {note} |")



def attention_table(base: dict, L: int, feat_hw, paths, args) -> None:
    print("\n| variant | mode | path | time (s) | peak extra mem | speed vs public | memory vs public | "
          "max abs diff to public | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    hw = feat_hw[0] * feat_hw[1]
    for variant in args.variants:
        cross = variant in ("cross_video", "cross_view")
        Lk = {"epipolar": L, "epipolar_ref": hw}.get(variant, hw)
        rows = hw if cross else L
        batch = 2 * base["frames"] if cross else 1
        cost = batch * rows * (Lk + 4) * args.dim * 4
        for mode in args.modes:
            spec = {**base, "what": "attention", "variant": variant, "mode": mode, "paths": list(paths)}
            if mode == "fwdbwd" and args.bwd_repeat:
                spec["repeat"] = args.bwd_repeat
            spec["float_ref"] = (L * (L + 4) * 4 * (3 if mode == "fwd" else args.heads + 3)) <= args.max_naive_bytes
            if cost > args.max_cost:
                # the public reference (dense bool mask over every pair) is out of reach: ours alone
                spec["paths"] = [p for p in paths if p != "dense"]
                spec["skip_public"] = True
                print(f"| {variant} | {mode} | public | - | - | - | - | - | skipped: {cost / 1e9:.0f} GFLOP of "
                      "dense scores > --max-cost |")
                res = child(spec, args.timeout)
            else:
                res = child(spec, args.timeout)
            if "error" in res:
                print(f"| {variant} | {mode} | all | - | - | - | - | - | {res['error']} |")
                continue
            pub = res["paths"].get("public")
            limit = None
            if "fraction" in res and "unmasked" in res["paths"]:
                limit = res["paths"]["unmasked"]["time"] * res["fraction"]
            for name, r in res["paths"].items():
                label = {"public": "public CVD (float map per head, SDPA)" if cross else "public CamI2V (bool SDPA)",
                         "public_bool": "bool-mask SDPA (CamI2V's call on CVD's layers)", "float": "float-bias softmax",
                         "unmasked": "unmasked (full attention)",
                         "projections": ("CVD's layers only (no attention)" if variant == "cross_video"
                                         else "projections only (public layers)"),
                         "projections_ours": "projections only (ours, fused)",
                         "matmuls": "module matrix products only (no other work)",
                         "sparse_fused": "ours sparse, fused forward",
                         "kernel_sparse": "attention alone: ours sparse kernel",
                         "kernel_sparse_fused": "attention alone: ours sparse kernel, fused forward",
                         "kernel_unmasked": "attention alone: unmasked SDPA"}.get(name, f"ours {name}")
                whole = pub and not name.startswith("kernel_")  # the kernel rows leave the projections out
                sp = f"{pub['time'] / r['time']:.2f}x" if whole else "-"
                # below 1 MiB the resident-set difference is noise (it can be negative): no ratio
                mm = f"{pub['mem'] / r['mem']:.1f}x" if whole and r["mem"] >= 2**20 else "-"
                note = r["note"]
                if name == "sparse" and limit:
                    note += (f"; density limit {limit:.3f}s, sparse/limit {r['time'] / limit:.2f}; "
                             f"sparse/unmasked {r['time'] / res['paths']['unmasked']['time']:.2f}")
                if name.startswith("kernel_sparse") and "fraction" in res and "kernel_unmasked" in res["paths"]:
                    klimit = res["paths"]["kernel_unmasked"]["time"] * res["fraction"]
                    if name == "kernel_sparse_fused":
                        note += "CAMVID_SPARSE_KERNEL=fused (PyTorch's fused kernel per chunk), the same plan; "
                    note += (f"same q and k/v as the module; kernel density limit {klimit:.4f}s (unmasked SDPA "
                             f"x the fraction computed), kernel/limit {r['time'] / klimit:.2f}")
                print(f"| {variant} | {mode} | {label} | {r['time']:.3f} | {fmt_mem(r['mem'])} | {sp} | {mm} | "
                      f"{r['diff']:.1e} | {note} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
