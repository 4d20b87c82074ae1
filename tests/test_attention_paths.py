"""Every attention path against one dense SDPA call, at every level, forward and gradients.

Paths: dense over a stored bool mask (the public CamI2V computation: registers prepended, one
``scaled_dot_product_attention`` with the bool mask), dense from row runs (chunked), block-sparse
(``camvid.attention.blocksparse``) and FlexAttention (forward, through ``torch.compile`` on the CPU).
Also: plans built from runs list exactly the mask, empty rows, the soft CVD band, the released
CamI2V grid and the cross-video band width.
"""

import math

import pytest
import torch

from camvid.attention import AttentionContext, build_cross_frame_attention, dense_masked_attention
from camvid.attention.sparse import build_tile_plan_from_runs, tiled_sparse_attention
from camvid.geometry import epipolar as geo
from conftest import dense_reference

T = 3


def cameras(B, image_hw, seed=0, dtype=torch.float64):
    """Translating, slightly rotating clips; clip b of a pair is shifted sideways."""
    g = torch.Generator().manual_seed(seed)
    H, W = image_hw
    K = torch.tensor([[0.8 * W, 0, W / 2], [0, 0.8 * W, H / 2], [0, 0, 1]], dtype=dtype).expand(B, T, 3, 3).clone()
    c2w = torch.eye(4, dtype=dtype).repeat(B, T, 1, 1)
    for b in range(B):
        d = torch.randn(3, generator=g, dtype=dtype)
        for t in range(T):
            a = 0.05 * t * (b + 1)
            c2w[b, t, :3, :3] = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]],
                                             dtype=dtype)
            c2w[b, t, :3, 3] = 0.15 * t * d / d.norm() + torch.tensor([0.3 * b, 0, 0], dtype=dtype)
    return K, c2w


def module_for(variant, dim, heads, dtype):
    kw = {"norm_num_groups": 8} if variant == "cross_video" else {}
    with torch.random.fork_rng():  # the default init draws from the global RNG: fix it, or the test varies by run
        torch.manual_seed(3)
        m = build_cross_frame_attention(variant, dim, heads, **kw).to(dtype)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in m.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.2)
    return m


KINDS = {"epipolar": "all", "epipolar_ref": "ref", "cross_video": "cross"}


def run(module, x, ctx, feat_hw):
    x = x.detach().clone().requires_grad_()
    y = module(x, ctx, feat_hw)
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum(),
                                [x, *params])
    return y.detach(), grads


def contexts(K, c2w, image_hw, views, **kw):
    ref = torch.tensor([1] * K.shape[0])
    make = lambda path, **extra: AttentionContext(K=K, c2w=c2w, image_hw=image_hw, cond_index=ref,  # noqa: E731
                                                  num_views=views, path=path, **kw, **extra)
    return make


@pytest.mark.parametrize("variant", ["epipolar", "epipolar_ref", "cross_video"])
def test_every_path_equals_one_dense_sdpa_at_every_level_fp64(variant):
    image_hw = (64, 96)
    views = 2 if variant == "cross_video" else 1
    K, c2w = cameras(views, image_hw)
    module = module_for(variant, 16, 2, torch.float64)
    kind = KINDS[variant]
    for feat_hw in [(8, 12), (4, 6), (2, 3)]:
        make = contexts(K, c2w, image_hw, views)
        stored = make("dense")
        stored.put_mask(kind, feat_hw, make("dense").mask(kind, feat_hw))  # one SDPA over the bool mask
        x = torch.randn(views, T, feat_hw[0] * feat_hw[1], 16, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(feat_hw[0]))
        want, want_grads = run(module, x, stored, feat_hw)
        assert want.abs().max() > 0
        for path, tile in [("dense", None), ("sparse", None), ("sparse", (1, 1)), ("sparse", (2, 3))]:
            ctx = make(path, tile_hw=tile)
            got, got_grads = run(module, x, ctx, feat_hw)
            assert ("mask", kind, feat_hw) not in ctx._cache, "the dense mask must not be built"
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=f"{path} {tile} {feat_hw}")
            for g, w in zip(got_grads, want_grads):
                torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11, msg=f"{path} {tile} {feat_hw} grad")


@pytest.mark.parametrize("variant", ["epipolar", "epipolar_ref", "cross_video"])
def test_sparse_equals_dense_sdpa_fp32_at_16x16(variant):
    image_hw = (128, 128)
    views = 2 if variant == "cross_video" else 1
    K, c2w = cameras(views, image_hw, dtype=torch.float32)
    module = module_for(variant, 16, 2, torch.float32)
    kind, feat_hw = KINDS[variant], (16, 16)
    make = contexts(K, c2w, image_hw, views)
    stored = make("dense")
    stored.put_mask(kind, feat_hw, make("dense").mask(kind, feat_hw))
    x = torch.randn(views, T, 256, 16, generator=torch.Generator().manual_seed(0))
    want, want_grads = run(module, x, stored, feat_hw)
    got, got_grads = run(module, x, make("sparse"), feat_hw)
    assert (got - want).abs().max() <= 1e-5
    for g, w in zip(got_grads, want_grads):
        assert (g - w).abs().max() <= 1e-5 * max(1.0, float(w.abs().max()))


def test_plan_from_runs_lists_exactly_the_mask():
    K, c2w = cameras(2, (64, 96))
    for mode in ("all", "ref"):
        runs = geo.epipolar_runs(K, c2w, (64, 96), (8, 12), mode=mode, ref_index=torch.tensor([0, 2]))
        dense = runs.rows(0, runs.num_queries)  # (B, Lq, Lk)
        for tile, frames in [((1, 1), 1), ((2, 4), 1), ((4, 6), 1), ((8, 12), 1), ((2, 4), 3), ((1, 2), 3)]:
            plan = build_tile_plan_from_runs(runs.start, runs.end, (8, 12), tile_hw=tile, tile_frames=frames,
                                             chunk_keys=97, min_chunk_tiles=1)
            assert plan.chunks[0].query_ids.shape[1] == tile[0] * tile[1] * frames
            rebuilt = torch.zeros(dense.numel() + 1, dtype=torch.bool)
            seen = torch.zeros(plan.batch * plan.num_queries, dtype=torch.long)
            for c in plan.chunks:
                flat = c.query_ids[:, :, None] * plan.num_keys + c.key_ids[:, None, :] % plan.num_keys
                assert torch.equal(c.key_ids // plan.num_keys, (c.query_ids[:, :1] // plan.num_queries).expand_as(
                    c.key_ids)), "a tile gathers keys of its own sample only"
                rebuilt[torch.where(c.mask, flat, dense.numel())] = True
                seen[c.query_ids.flatten()] += 1
            assert torch.equal(rebuilt[:-1].view_as(dense), dense), (mode, tile, frames)
            assert bool((seen == 1).all()), "every query is in exactly one tile"
            assert plan.computed_pairs >= int(dense.sum())


def _empty_row_runs():
    """Hand-made runs (1 sample, 2 frames of 2x3 cells, keys = 2 frames) with empty query rows."""
    g = torch.Generator().manual_seed(0)
    start = torch.randint(0, 3, (1, 12, 2, 2), generator=g, dtype=torch.uint8)
    end = (start + torch.randint(0, 3, start.shape, generator=g, dtype=torch.uint8)).clamp(max=3)
    end[0, [0, 5, 11]] = start[0, [0, 5, 11]]  # three queries keep no key at all
    return start, end


@pytest.mark.parametrize("registers", [0, 2])
def test_empty_rows_are_zero_without_registers_and_defined_with_them(registers):
    start, end = _empty_row_runs()
    runs = geo.EpipolarRuns(start, end, torch.arange(2).expand(1, 2, 2), (2, 3), 2)
    mask = runs.rows(0, 12)
    assert not mask[0, [0, 5, 11]].any() and mask.any(-1).sum() == 9
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 12, 2, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    reg = [torch.randn(1, 2, registers, 4, generator=g, dtype=torch.float64) for _ in range(2)] if registers else [None] * 2
    plan = build_tile_plan_from_runs(start, end, (2, 3), tile_hw=(1, 3))
    out = tiled_sparse_attention(q, k, v, plan, *reg)
    kh, vh = k.transpose(1, 2), v.transpose(1, 2)
    full = mask
    if registers:
        kh, vh = torch.cat([reg[0], kh], 2), torch.cat([reg[1], vh], 2)
        full = torch.cat([torch.ones(1, 12, registers, dtype=torch.bool), mask], -1)
    scores = (q.transpose(1, 2) @ kh.transpose(-1, -2)) / 2.0
    want = (torch.softmax(scores.masked_fill(~full[:, None], float("-inf")), -1).nan_to_num(0.0) @ vh).transpose(1, 2)
    torch.testing.assert_close(out, want)
    if registers:
        assert out[0, [0, 5, 11]].abs().min() > 0  # the registers keep the rows defined
    else:
        assert torch.equal(out[0, [0, 5, 11]], torch.zeros_like(out[0, [0, 5, 11]]))
        dense = dense_masked_attention(q.transpose(1, 2), kh, vh, mask | ~mask.any(-1, keepdim=True),
                                       mask.any(-1)).transpose(1, 2)
        torch.testing.assert_close(out, dense)
        gq, = torch.autograd.grad(out.sum(), q)
        assert torch.equal(gq[0, [0, 5, 11]], torch.zeros_like(gq[0, [0, 5, 11]]))  # no gradient either


@pytest.mark.slow  # torch.compile of FlexAttention on the CPU takes about a minute
@pytest.mark.parametrize("variant", ["epipolar", "epipolar_ref", "cross_video"])
def test_flex_forward_equals_dense_on_cpu(variant):
    """FlexAttention's forward runs on the CPU through torch.compile; its backward does not (the
    CPU lowering has no backward), so gradients are only checked on CUDA by benchmarks/gpu_check.sh."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    image_hw = (64, 64)
    views = 2 if variant == "cross_video" else 1
    K, c2w = cameras(views, image_hw, dtype=torch.float32)
    module = module_for(variant, 32, 2, torch.float32)
    kind, feat_hw = KINDS[variant], (8, 8)
    make = contexts(K, c2w, image_hw, views)
    x = torch.randn(views, T, 64, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = module(x, make("dense"), feat_hw)
        ctx = make("flex")
        got = module(x, ctx, feat_hw)
    assert ("mask", kind, feat_hw) not in ctx._cache
    fbm = ctx.flex_block_mask(kind, feat_hw, 0 if variant == "cross_video" else 4)
    assert 0.0 <= fbm.sparsity < 1.0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-5)


def test_flex_block_mask_visits_every_block_holding_a_kept_pair():
    pytest.importorskip("torch.nn.attention.flex_attention")
    from camvid.attention.flex import build_flex_block_mask

    K, c2w = cameras(1, (64, 96))
    runs = geo.epipolar_runs(K, c2w, (64, 96), (8, 12))
    dense = runs.rows(0, runs.num_queries)[0]  # (Lq, Lk)
    for regs in (0, 4):
        bm = build_flex_block_mask(runs.start, runs.end, (8, 12), regs, block=16).block_mask
        full, needed, visited = _kept_needed_visited(bm, dense, regs)
        assert torch.equal(visited, needed)  # exactly the blocks with a kept pair: none missed, none extra
        # mask_mod reproduces the runs exactly inside the visited blocks
        qi, ki = torch.arange(full.shape[0]).view(-1, 1), torch.arange(full.shape[1]).view(1, -1)
        assert torch.equal(bm.mask_mod(torch.tensor(0), torch.tensor(0), qi, ki), full)


def _kept_needed_visited(bm, kept, regs, block=16):
    """A block mask's padded (queries, keys) mask for the kept pairs ``kept`` plus ``regs`` register
    columns, the blocks holding a kept pair, and the blocks the block mask visits (sample 0)."""
    Lq, Lk = kept.shape
    Lq_pad, Lk_pad = bm.seq_lengths
    full = torch.zeros(Lq_pad, Lk_pad, dtype=torch.bool)
    full[:Lq, :Lk] = kept
    full[:Lq, Lk:Lk + regs] = True
    needed = full.view(Lq_pad // block, block, Lk_pad // block, block).any(3).any(1)
    visited = torch.zeros_like(needed)
    counts, idx = bm.kv_num_blocks[0, 0], bm.kv_indices[0, 0]
    for qb in range(needed.shape[0]):
        visited[qb, idx[qb, : counts[qb]].long()] = True
    return full, needed, visited


@pytest.mark.parametrize("permute", ["queries", "keys", "both"])
def test_flex_block_mask_with_orders_visits_every_needed_block_and_masks_exactly(permute):
    """With query and/or key orders the block mask lives in permuted positions: every block holding a
    kept pair is visited, and mask_mod is the permuted mask exactly (registers stay after the keys)."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    from camvid.attention.flex import build_flex_block_mask

    K, c2w = cameras(1, (64, 96))
    runs = geo.epipolar_runs(K, c2w, (64, 96), (8, 12))
    dense = runs.rows(0, runs.num_queries)[0]  # (Lq, Lk)
    Lq, Lk = dense.shape
    g = torch.Generator().manual_seed(3)
    qo = torch.randperm(Lq, generator=g).view(1, -1) if permute in ("queries", "both") else None
    ko = torch.randperm(Lk, generator=g).view(1, -1) if permute in ("keys", "both") else None
    regs = 4
    fbm = build_flex_block_mask(runs.start, runs.end, (8, 12), regs, block=16, query_order=qo, key_order=ko)
    bm = fbm.block_mask
    moved = dense[qo[0]] if qo is not None else dense
    moved = moved[:, ko[0]] if ko is not None else moved
    full, needed, visited = _kept_needed_visited(bm, moved, regs)
    assert not (needed & ~visited).any()  # no block with a kept pair is skipped
    qi, ki = torch.arange(full.shape[0]).view(-1, 1), torch.arange(full.shape[1]).view(1, -1)
    assert torch.equal(bm.mask_mod(torch.tensor(0), torch.tensor(0), qi, ki), full)
    if qo is not None:
        assert torch.equal(qo[0][fbm.query_position[0]], torch.arange(Lq))  # the inverse order
    with pytest.raises(ValueError, match="key_order must be"):
        build_flex_block_mask(runs.start, runs.end, (8, 12), regs, key_order=torch.arange(Lk - 1).view(1, -1))
    with pytest.raises(ValueError, match="query_order must hold a permutation"):
        build_flex_block_mask(runs.start, runs.end, (8, 12), regs, query_order=torch.zeros(1, Lq, dtype=torch.long))


def test_flex_orders_skip_more_blocks_at_the_32x32_level():
    """The context's orders (pencil-sorted frames for "all", band-sorted queries and a pencil-sorted
    reference frame for "ref") leave more blocks without a kept pair than token order does."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    from camvid.attention.flex import build_flex_block_mask

    image_hw, feat_hw = (256, 256), (32, 32)
    K, c2w = cameras(1, image_hw)
    ctx = AttentionContext(K=K, c2w=c2w, image_hw=image_hw, path="flex")
    for kind in ("all", "ref"):
        runs = ctx.runs(kind, feat_hw)
        plain = build_flex_block_mask(runs.start, runs.end, feat_hw, 4)
        ordered = ctx.flex_block_mask(kind, feat_hw, 4)
        assert ordered.query_order is not None and ordered.key_order is not None
        for order, n in ((ordered.query_order, runs.num_queries), (ordered.key_order, ordered.num_keys)):
            assert torch.equal(order[0].sort().values, torch.arange(n))  # permutations
        assert ordered.visited_blocks < 0.9 * plain.visited_blocks, (kind, ordered.sparsity, plain.sparsity)
    from camvid.attention.sparse import band_query_order

    every_frame = ctx.runs("all", feat_hw)  # one run segment per key frame: no single band to sort by
    with pytest.raises(ValueError, match="one key frame"):
        band_query_order(every_frame.start, every_frame.end, feat_hw[1])


def test_soft_band_matches_cvd_formula_written_independently():
    image_hw, feat_hw = (256, 256), (8, 8)
    K, c2w = cameras(2, image_hw)
    ctx = AttentionContext(K=K, c2w=c2w, image_hw=image_hw, num_views=2, band="soft")
    bias = ctx.bias("cross", feat_hw)  # (B*T, hw, hw)
    # CVD's get_attn_map: distances on a 256-pixel grid, band = 3 / 128 * max distance, decay 3 / band
    for b, p in ((0, 1), (1, 0)):
        for t in range(T):
            R = c2w[p, t, :3, :3].T @ c2w[b, t, :3, :3]
            tt = c2w[p, t, :3, :3].T @ (c2w[b, t, :3, 3] - c2w[p, t, :3, 3])
            tx = torch.tensor([[0, -tt[2], tt[1]], [tt[2], 0, -tt[0]], [-tt[1], tt[0], 0]], dtype=torch.float64)
            F = torch.linalg.inv(K[p, t]).T @ tx @ R @ torch.linalg.inv(K[b, t])
            ys, xs = torch.meshgrid(torch.arange(8.0, dtype=torch.float64), torch.arange(8.0, dtype=torch.float64),
                                    indexing="ij")
            pts = torch.stack([(xs.flatten() + 0.5) * 32, (ys.flatten() + 0.5) * 32, torch.ones(64)], -1)
            lines = pts @ F.T
            d = (lines @ pts.T).abs() / lines[:, :2].norm(dim=-1, keepdim=True)
            band = 3.0 / 128.0 * d.max()
            want = -(d - band).clamp(min=0) * (3.0 / (band + 1e-6))
            got = bias[b * T + t]
            if t == 0 and torch.allclose(c2w[b, 0], c2w[p, 0]):
                continue  # coincident cameras: pseudo lines, not epipolar ones
            torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
            assert (got == 0).any() and (got < -3).any()  # zero inside the band, decaying outside


def test_soft_band_runs_on_the_dense_path_and_rejects_sparse():
    K, c2w = cameras(2, (64, 64))
    module = module_for("cross_video", 16, 2, torch.float64)
    ctx = AttentionContext(K=K, c2w=c2w, image_hw=(64, 64), num_views=2, band="soft")
    x = torch.randn(2, T, 64, 16, dtype=torch.float64)
    y = module(x, ctx, (8, 8))
    assert torch.isfinite(y).all() and ("bias", "cross", (8, 8)) in ctx._cache
    hard = module(x, AttentionContext(K=K, c2w=c2w, image_hw=(64, 64), num_views=2), (8, 8))
    assert not torch.allclose(y, hard)
    with pytest.raises(ValueError, match="band='soft'.*path=dense or auto"):
        AttentionContext(band="soft", path="sparse")


def test_context_rejects_unknown_band_and_grid_with_the_option_name():
    with pytest.raises(ValueError, match=r"attn\.band.*hard, soft"):
        AttentionContext(band="fuzzy")
    with pytest.raises(ValueError, match=r"attn\.grid.*camvid, cami2v_release"):
        AttentionContext(grid="pixel")
    with pytest.raises(ValueError, match="tau"):
        AttentionContext(tau=-1.0)


def test_released_cami2v_grid_is_the_public_formula_and_every_path_accepts_it():
    image_hw, feat_hw = (64, 64), (8, 8)
    K, c2w = cameras(1, image_hw)
    mask = geo.epipolar_mask(K, c2w, image_hw, feat_hw, grid="cami2v_release")[0]  # (T, hw, T, hw)
    # CamI2V's get_epipolar_mask: cell centres k * d + d / 2 - 0.5 with d = 8, threshold d * sqrt(2) / 2
    d = 8
    ys, xs = torch.meshgrid(torch.arange(8.0, dtype=torch.float64), torch.arange(8.0, dtype=torch.float64),
                            indexing="ij")
    grid = torch.stack([xs.flatten() * d + d / 2 - 0.5, ys.flatten() * d + d / 2 - 0.5, torch.ones(64)], -1)
    agree = total = 0
    for i in range(T):
        for j in range(T):
            if i == j:
                continue  # the public code has no line for a frame onto itself (F = 0); ours draws one
            F = geo.fundamental_matrix(K[0, i], c2w[0, i], K[0, j], c2w[0, j])
            lines = grid @ F.T
            lines = lines / lines[:, :2].norm(dim=-1, keepdim=True)
            want = (lines @ grid.T).abs() < d * math.sqrt(2) / 2
            agree += int((mask[i, :, j] == want).sum())
            total += want.numel()
    assert agree == total  # equal off ties (the public test is strict, ours <=; no tie here)
    ours = geo.epipolar_mask(K, c2w, image_hw, feat_hw)[0]
    assert not torch.equal(ours, mask)  # half a pixel matters at the band's edge
    module = module_for("epipolar", 16, 2, torch.float64)
    x = torch.randn(1, T, 64, 16, dtype=torch.float64)
    make = contexts(K, c2w, image_hw, 1, grid="cami2v_release")
    stored = make("dense")
    stored.put_mask("all", feat_hw, mask.reshape(1, T * 64, T * 64))
    want = module(x, stored, feat_hw)
    for path in ("dense", "sparse"):
        torch.testing.assert_close(module(x, make(path), feat_hw), want, rtol=1e-10, atol=1e-12)


def _realestate_like_pair(frames, seed):
    """A RealEstate10K-like pair: shared first frame, forward walk with yaw vs a sideways arc."""
    g = torch.Generator().manual_seed(seed)
    K = torch.tensor([[0.55 * 256, 0, 128], [0, 0.55 * 256, 128], [0, 0, 1]], dtype=torch.float64)
    K = K.expand(2, frames, 3, 3).clone()
    c2w = torch.eye(4, dtype=torch.float64).repeat(2, frames, 1, 1)
    yaw = [float(torch.rand(1, generator=g)) * 0.4 - 0.2, float(torch.rand(1, generator=g)) * 0.6 - 0.3]
    for v in range(2):
        for t in range(frames):
            a = yaw[v] * t / frames
            c2w[v, t, :3, :3] = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]],
                                             dtype=torch.float64)
            step = torch.tensor([0.0, 0.0, 0.08]) if v == 0 else torch.tensor([0.08, 0.01, 0.02])
            c2w[v, t, :3, 3] = step * t
    return K, c2w


def test_default_hard_band_leaves_no_level_mostly_empty():
    """tau = 3 px (the old default) empties most query rows of the coarse levels; the default width
    (half a cell diagonal per level) keeps every level at least half populated."""
    for seed in range(3):
        K, c2w = _realestate_like_pair(8, seed)
        for feat_hw in [(32, 32), (16, 16), (8, 8), (4, 4)]:
            fixed = AttentionContext(K=K, c2w=c2w, image_hw=(256, 256), num_views=2, tau=3.0)
            default = AttentionContext(K=K, c2w=c2w, image_hw=(256, 256), num_views=2)

            def empty(c, feat_hw=feat_hw):
                return 1.0 - float(c.runs("cross", feat_hw).rows(0, feat_hw[0] * feat_hw[1]).any(-1).float().mean())

            assert empty(default) < 0.5, (seed, feat_hw, empty(default))
            if feat_hw == (4, 4):
                assert empty(fixed) > empty(default)


def test_generic_block_sparse_path_equals_the_fused_cpu_kernel():
    """The device-agnostic chunk path (used on CUDA) gives the fused CPU kernel's values and gradients."""
    from camvid.attention import blocksparse

    start, end = _empty_row_runs()
    plan = build_tile_plan_from_runs(start, end, (2, 3), tile_hw=(1, 3), chunk_keys=5, min_chunk_tiles=1)
    g = torch.Generator().manual_seed(2)
    for R in (0, 2):
        q, k, v = (torch.randn(12 + (R if i else 0), 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
                   for i in range(3))
        kv = torch.stack([k, v], dim=1)  # registers first, keys and values side by side
        fused = blocksparse._BlockSparseAttention.apply(q, kv, R, plan)
        generic = blocksparse._generic(q, kv, R, plan)
        torch.testing.assert_close(generic, fused)
        w = torch.randn(fused.shape, generator=g, dtype=torch.float64)
        for a, b in zip(torch.autograd.grad((fused * w).sum(), (q, k, v)),
                        torch.autograd.grad((generic * w).sum(), (q, k, v))):
            torch.testing.assert_close(a, b)


def test_reused_forward_buffers_never_change_a_returned_output_or_a_saved_input():
    """The kernel keeps per-plan buffers between calls (queries in chunk order when no gradient needs
    them, outputs in chunk order; the backward's key and value gradient sums): a second call on the same
    plan leaves the first call's output and the first call's gradients as they were."""
    from camvid.attention import blocksparse

    start, end = _empty_row_runs()
    plan = build_tile_plan_from_runs(start, end, (2, 3), tile_hw=(1, 3), chunk_keys=5, min_chunk_tiles=1)
    g = torch.Generator().manual_seed(4)
    q1, q2 = (torch.randn(12, 2, 4, generator=g, dtype=torch.float64) for _ in range(2))
    kv = torch.randn(12, 2, 2, 4, generator=g, dtype=torch.float64)
    alone = blocksparse._BlockSparseAttention.apply(q1, kv, 0, plan).clone()
    first = blocksparse._BlockSparseAttention.apply(q1, kv, 0, plan)
    blocksparse._BlockSparseAttention.apply(q2, kv, 0, plan)
    assert torch.equal(first, alone)
    want = torch.autograd.grad(blocksparse._BlockSparseAttention.apply(q1.requires_grad_(), kv, 0, plan).sum(), q1)[0]
    y1 = blocksparse._BlockSparseAttention.apply(q1, kv, 0, plan)
    blocksparse._BlockSparseAttention.apply(q2.requires_grad_(), kv, 0, plan)  # another layer, same plan
    torch.testing.assert_close(torch.autograd.grad(y1.sum(), q1)[0], want, rtol=0, atol=0)
    # the backward sums key and value gradients in per-plan buffers: a returned gradient is its own
    kv.requires_grad_()
    dkv1 = torch.autograd.grad(blocksparse._BlockSparseAttention.apply(q1, kv, 0, plan).sum(), kv)[0]
    kept = dkv1.clone()
    dkv2 = torch.autograd.grad((2 * blocksparse._BlockSparseAttention.apply(q2, kv, 0, plan)).sum(), kv)[0]
    assert torch.equal(dkv1, kept) and not torch.equal(dkv2, kept)


def test_auto_path_choice():
    K, c2w = cameras(2, (64, 64))
    ctx = AttentionContext(K=K, c2w=c2w, image_hw=(64, 64), num_views=2)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert ctx.choose_path("all", (8, 8), 1, 192, 192, cpu) == "dense"  # small: one SDPA call
    assert ctx.choose_path("all", (32, 32), 1, 16384, 16384, cpu) == "sparse"  # 32x32 x 16 frames
    assert ctx.choose_path("cross", (16, 16), 256, 256, 256, cpu) == "sparse"  # from 10x16 cells per frame on
    assert ctx.choose_path("ref", (10, 16), 1, 2560, 160, cpu) == "sparse"
    assert ctx.choose_path("cross", (8, 8), 32, 64, 64, cpu) == "dense"  # coarse: one SDPA call
    assert ctx.choose_path("all", (5, 8), 1, 640, 640, cpu) == "dense"
    assert ctx.choose_path("all", (16, 16), 1, 32, 32, cpu) == "dense"  # fine level, too few pairs
    assert ctx.choose_path("ref", (32, 32), 1, 16384, 1024, cpu) == "sparse"  # pencil-sorted tiles pay off
    assert ctx.choose_path("cross", (32, 32), 32, 1024, 1024, cpu) == "sparse"
    assert ctx.choose_path("all", (8, 8), 1, 192, 192, cuda) == "flex"  # decided from the device type only
    soft = AttentionContext(K=K, c2w=c2w, image_hw=(64, 64), num_views=2, band="soft")
    assert soft.choose_path("cross", (8, 8), 6, 64, 64, cuda) == "bias"
    stored = AttentionContext(K=K, c2w=c2w, image_hw=(64, 64), path="flex")
    stored.put_mask("all", (8, 8), torch.ones(2, 192, 192, dtype=torch.bool))
    with pytest.raises(ValueError, match="path='flex' builds its block mask from row runs"):
        stored.choose_path("all", (8, 8), 2, 192, 192, cpu)


def test_forward_widens_long_key_tails_to_a_multiple_of_16_and_stays_exact():
    """The fused CPU kernel's forward handles a row's key count modulo 16 in a slow tail: the forward
    pads R + U up to the next multiple of 16 when that takes at most 8 slots (-inf, a valid row); the
    backward keeps the plan's width. Outputs and gradients stay those of the dense computation."""
    from camvid.attention import blocksparse
    from camvid.attention.sparse import TileChunk, TilePlan

    g = torch.Generator().manual_seed(7)
    Q, Lk = 2, 50
    widths = [5, 10, 16, 40, 41]  # R + U of 5 (11 to pad: no), 10 (6: yes), 16, 40 (8: yes), 41 (7: yes) at R = 0
    for R in (0, 2):
        chunks, at = [], 0
        for U in widths:
            key_ids = torch.stack([torch.randperm(Lk, generator=g)[:U] for _ in range(2)])
            sub = torch.rand(2, Q, U, generator=g) < 0.5
            sub[0, 0] = False  # one query with no key (only the registers, if any)
            chunks.append(TileChunk(torch.arange(at, at + 2 * Q).view(2, Q), key_ids, sub_mask=sub))
            at += 2 * Q
        for c in chunks:
            plain_ids, plain_bias = blocksparse._chunk_inputs(c, R, Lk, torch.float64)
            ids, bias = blocksparse._chunk_inputs(c, R, Lk, torch.float64, aligned=True)
            width = R + c.shape[2]
            extra = -width % 16
            want = width + extra if extra <= 8 else width
            assert bias.shape == (2, 1, Q, want) and ids.numel() == 2 * want
            assert torch.equal(bias[..., :width], plain_bias) and bool(torch.isneginf(bias[..., width:]).all())
            assert torch.equal(ids.view(2, want)[:, :width].reshape(-1), plain_ids)
            assert plain_bias.shape[-1] == width  # the backward's width
        assert {blocksparse._chunk_inputs(c, R, Lk, torch.float64, aligned=True)[1].shape[-1] % 16 == 0
                for c in chunks} == {True, False}, "both cases must be exercised"
        plan = TilePlan(batch=1, num_queries=at, num_keys=Lk, chunks=chunks,
                        row_valid=torch.ones(at, dtype=torch.bool))
        q = torch.randn(at, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
        kv = torch.randn(R + Lk, 2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
        got = blocksparse._BlockSparseAttention.apply(q, kv, R, plan)
        want, _ = dense_reference(plan, q, kv, R)  # R = 0: the query with no key gets 0
        torch.testing.assert_close(got, want)
        w = torch.randn(got.shape, generator=g, dtype=torch.float64)
        for a, b in zip(torch.autograd.grad((got * w).sum(), (q, kv)), torch.autograd.grad((want * w).sum(), (q, kv))):
            torch.testing.assert_close(a, b)
