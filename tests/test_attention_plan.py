"""The block-sparse tile plan: tilings it chooses among, pencil-sorted tiles, bounded chunk padding,
slot intervals and the additive bias made from them, all exact against the dense mask."""

import math
import os

import pytest
import torch

from camvid.attention import AttentionContext, sparse
from camvid.attention.sparse import TileChunk, build_tile_plan_from_runs, tiled_sparse_attention
from camvid.geometry import epipolar as geo
from conftest import load_benchmark


def clip(B, T, image_hw, forward=False, dtype=torch.float64):
    """B clips of T frames; sideways (or forward) translation with a slight yaw; clip b shifted by 0.3 b."""
    H, W = image_hw
    K = torch.tensor([[0.8 * W, 0, W / 2], [0, 0.8 * W, H / 2], [0, 0, 1]], dtype=dtype).expand(B, T, 3, 3).clone()
    c2w = torch.eye(4, dtype=dtype).repeat(B, T, 1, 1)
    d = torch.tensor([0.0, 0.0, 1.0] if forward else [1.0, 0.1, 0.2], dtype=dtype)
    for b in range(B):
        for t in range(T):
            a = 0.03 * t
            c2w[b, t, :3, :3] = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]],
                                             dtype=dtype)
            c2w[b, t, :3, 3] = 0.2 * t * d / d.norm() + torch.tensor([0.3 * b, 0, 0], dtype=dtype)
    return K, c2w


def rebuilt_mask(plan):
    """The (B * Lq, Lk) mask a plan computes, from its chunks' key ids and sub-masks."""
    out = torch.zeros(plan.batch * plan.num_queries * plan.num_keys + 1, dtype=torch.bool)
    seen = torch.zeros(plan.batch * plan.num_queries, dtype=torch.long)
    for c in plan.chunks:
        flat = c.query_ids[:, :, None] * plan.num_keys + c.key_ids[:, None, :] % plan.num_keys
        assert torch.equal(c.key_ids // plan.num_keys, (c.query_ids[:, :1] // plan.num_queries).expand_as(c.key_ids))
        out[torch.where(c.mask, flat, out.numel() - 1)] = True
        seen[c.query_ids.flatten()] += 1
    assert bool((seen == 1).all()), "every query is in exactly one tile"
    return out[:-1].view(plan.batch * plan.num_queries, plan.num_keys)


def assert_exact_fp64(plan, dense, registers=0, seed=1):
    """The plan's sparse attention equals the dense masked computation in fp64, forward and gradients
    (``dense`` (1, Lq, Lk) bool; ``registers`` register tokens open to every query; a query with no
    key and no register gives 0)."""
    assert torch.equal(rebuilt_mask(plan), dense[0])
    g = torch.Generator().manual_seed(seed)
    Lq, Lk, H, D = dense.shape[1], dense.shape[2], 2, 4
    q = torch.randn(1, Lq, H, D, generator=g, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(1, Lk, H, D, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    regs = tuple(torch.randn(1, H, registers, D, generator=g, dtype=torch.float64, requires_grad=True)
                 for _ in range(2)) if registers else ()
    got = tiled_sparse_attention(q, k, v, plan, *regs)
    kh, vh, full = k.transpose(1, 2), v.transpose(1, 2), dense
    if registers:
        kh, vh = torch.cat([regs[0], kh], 2), torch.cat([regs[1], vh], 2)
        full = torch.cat([torch.ones(1, Lq, registers, dtype=torch.bool), dense], -1)
    scores = q.transpose(1, 2) @ kh.transpose(-1, -2) / math.sqrt(D)
    attn = torch.softmax(scores.masked_fill(~full[:, None], float("-inf")), -1).nan_to_num(0.0)
    want = (attn @ vh).transpose(1, 2)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    w = torch.randn(got.shape, generator=g, dtype=torch.float64)
    inputs = (q, k, v, *regs)
    for a, b in zip(torch.autograd.grad((got * w).sum(), inputs), torch.autograd.grad((want * w).sum(), inputs)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_pencil_order_gives_cells_on_one_epipolar_line_one_key():
    image_hw, feat_hw = (64, 64), (8, 8)
    K = torch.tensor([[50.0, 0, 32], [0, 50.0, 32], [0, 0, 1]], dtype=torch.float64)
    eye = torch.eye(4, dtype=torch.float64)
    angle = torch.zeros((), dtype=torch.float64)
    # Sideways translation: horizontal epipolar lines, so the key is constant along each feature row
    # and differs between rows.
    side = eye.clone()
    side[0, 3] = 1.0
    key = geo.pencil_order(K, eye, K, side, image_hw, feat_hw, angle).view(8, 8)
    assert torch.allclose(key, key[:, :1].expand(8, 8), atol=1e-9)
    assert key[:, 0].unique().numel() == 8
    # Forward translation: lines through the image centre; cells mirrored through it share one line.
    fwd = eye.clone()
    fwd[2, 3] = 1.0
    key = geo.pencil_order(K, eye, K, fwd, image_hw, feat_hw, angle).view(8, 8)
    gap = (key - key.flip(0).flip(1)).remainder(math.pi)
    assert bool((torch.minimum(gap, math.pi - gap) < 1e-9).all())  # equal as line directions (mod pi)
    assert key.unique().numel() > 8  # and distinct lines elsewhere
    assert bool(((key >= 0) & (key <= math.pi)).all())


def test_plan_chooses_the_tiling_with_the_fewest_pairs():
    """Horizontal cross-video bands: tiles along feature rows (pencil order or 1 x w rectangles)
    compute far fewer pairs than the default square-ish tile, and the chosen plan is still exact."""
    image_hw, feat_hw = (64, 128), (8, 16)
    K, c2w = clip(2, 4, image_hw)
    c2w[1] = c2w[0]
    c2w[1, :, 0, 3] += 0.5  # partner shifted along the camera x axis: horizontal bands
    ctx = AttentionContext(K=K, c2w=c2w, image_hw=image_hw, num_views=2, path="sparse")
    runs = ctx.runs("cross", feat_hw)
    chosen = ctx.tile_plan("cross", feat_hw)
    fixed = build_tile_plan_from_runs(runs.start, runs.end, feat_hw, tile_hw=(4, 8))
    assert chosen.computed_pairs * 2 <= fixed.computed_pairs
    dense = runs.rows(0, runs.num_queries).reshape(-1, runs.start.shape[2] * 128)
    assert torch.equal(rebuilt_mask(chosen), dense)


@pytest.mark.parametrize("mode", ["all", "ref"])
def test_pencil_sorted_tiles_are_exact_forward_and_gradients_fp64(mode, monkeypatch):
    """Tiles of queries in an arbitrary order (scattered cells of a frame): sub-masks, outputs and
    gradients equal the dense computation."""
    image_hw, feat_hw = (48, 64), (6, 8)
    K, c2w = clip(1, 3, image_hw, forward=True)
    runs = geo.epipolar_runs(K, c2w, image_hw, feat_hw, mode=mode, ref_index=1)
    order = torch.rand(runs.start.shape[:2], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    monkeypatch.setattr(sparse, "_candidate_tiles", lambda *a: [sparse._sorted_tile_query_ids(order, 48, 8)])
    plan = build_tile_plan_from_runs(runs.start, runs.end, feat_hw, order=order, chunk_keys=64,
                                      min_chunk_tiles=1)
    assert len(plan.chunks) > 2
    tiles = sorted(map(tuple, torch.cat([c.query_ids for c in plan.chunks]).tolist()))
    assert tiles == sorted(map(tuple, sparse._sorted_tile_query_ids(order, 48, 8).tolist()))
    assert any(max(t) - min(t) > 8 for t in tiles), "tiles of scattered cells, not rectangles"
    assert_exact_fp64(plan, runs.rows(0, runs.num_queries), registers=2, seed=1)


def test_band_sort_keys_put_queries_of_one_band_together_whatever_their_frame():
    """Runs in one key frame (h = 8 rows, w = 16): queries 0, 3 and 5 keep the same vertical band,
    1 and 4 the same horizontal one, 2 a diagonal; each band's queries get equal keys, the bands
    distinct ones."""
    h, w = 8, 16
    lo = torch.zeros(6, h, dtype=torch.int16)
    hi = torch.zeros(6, h, dtype=torch.int16)
    for qi in (0, 3, 5):  # columns 6..8 of every row
        lo[qi], hi[qi] = 6, 9
    for qi in (1, 4):  # all columns of rows 2 and 3
        lo[qi, 2:4], hi[qi, 2:4] = 0, w
    lo[2] = torch.arange(h, dtype=torch.int16)  # cells (r, r..r+1): a diagonal
    hi[2] = lo[2] + 2
    for bins in sparse._BAND_ANGLE_BINS:
        key = sparse._band_sort_keys(sparse._band_lines(lo, hi, w), 1, bins)[0]
        assert key[0] == key[3] == key[5] and key[1] == key[4]
        assert len({float(key[0]), float(key[1]), float(key[2])}) == 3
    tiles = sparse._sorted_across_frames(sparse._band_sort_keys(sparse._band_lines(lo, hi, w), 2, 8), 3)  # 2 samples of 3 queries
    assert sorted(map(sorted, tiles.tolist())) == [[0, 1, 2], [3, 4, 5]]  # tiles never mix samples


def test_reference_frame_plans_tile_queries_of_all_frames_by_band_exactly_fp64(monkeypatch):
    """``epipolar_ref``: every query looks into the reference frame, so the plan may group queries of
    different frames whose bands coincide; that tiling is chosen when it computes fewer pairs than
    the per-frame ones, and it is exact, forward and gradients."""
    image_hw, feat_hw = (64, 96), (8, 12)
    K, c2w = clip(1, 6, image_hw)
    runs = geo.epipolar_runs(K, c2w, image_hw, feat_hw, mode="ref", ref_index=0)
    hw = feat_hw[0] * feat_hw[1]
    chosen = build_tile_plan_from_runs(runs.start, runs.end, feat_hw, order=None)
    per_frame = sparse._candidate_tiles(1, 6, feat_hw, None, None, None)
    lo = runs.start.reshape(-1, feat_hw[0]).to(torch.int16)
    hi = runs.end.reshape(-1, feat_hw[0]).to(torch.int16)
    best_per_frame = min(int(sparse._hulls(lo, hi, t, feat_hw[1])[1].sum()) for t in per_frame)
    chosen_tiles = torch.cat([c.query_ids for c in chosen.chunks])
    assert int(sparse._hulls(lo, hi, chosen_tiles, feat_hw[1])[1].sum()) < best_per_frame
    assert any(len({int(i) // hw for i in t}) > 1 for t in chosen_tiles.tolist()), "tiles mix query frames"
    band = sparse._sorted_across_frames(sparse._band_sort_keys(sparse._band_lines(lo, hi, feat_hw[1]), 1, 8), 32)
    monkeypatch.setattr(sparse, "_candidate_tiles", lambda *a: [band])
    plan = build_tile_plan_from_runs(runs.start, runs.end, feat_hw, chunk_keys=64, min_chunk_tiles=1)
    assert_exact_fp64(plan, runs.rows(0, runs.num_queries), seed=3)


def test_chunks_bound_padding_and_size():
    g = torch.Generator().manual_seed(2)
    union = torch.cat([torch.randint(1, 400, (300,), generator=g), torch.zeros(5, dtype=torch.long)])
    seen = torch.zeros(len(union), dtype=torch.long)
    for sel, width in sparse._pack_tiles(union, chunk_keys=2000, max_padding=0.25):
        counts = union[sel].clamp(min=1)
        assert int(counts.max()) == width
        assert bool((counts >= 0.75 * width).all()), "a chunk's tiles have at least 75% of its width"
        assert len(sel) == 1 or len(sel) * width <= 2000
        seen[sel] += 1
    assert bool((seen == 1).all())
    # max_padding=1 packs by size only (the previous behaviour): fewer, fuller chunks
    assert len(list(sparse._pack_tiles(union, 2000, 1.0))) < len(list(sparse._pack_tiles(union, 2000, 0.25)))
    with pytest.raises(ValueError, match="max_padding"):
        build_tile_plan_from_runs(torch.zeros(1, 4, 1, 2, dtype=torch.uint8), torch.ones(1, 4, 1, 2, dtype=torch.uint8),
                                  (2, 2), max_padding=1.5)


def test_chunks_hold_min_tiles_up_to_max_keys():
    """Small key target: a chunk of narrow tiles still holds ``min_tiles`` tiles (one parallel region
    with enough work), wide tiles never exceed ``max_keys``; every tile is packed once."""
    g = torch.Generator().manual_seed(3)
    union = torch.cat([torch.randint(900, 1000, (40,), generator=g), torch.randint(20, 40, (300,), generator=g)])
    seen = torch.zeros(len(union), dtype=torch.long)
    chunks = list(sparse._pack_tiles(union, chunk_keys=500, max_padding=1.0, min_tiles=16, max_keys=4000))
    for sel, width in chunks:
        assert len(sel) * width <= 4000 or len(sel) == 1
        assert len(sel) * width <= 500 or len(sel) <= 16, "above the key target only to reach min_tiles"
        seen[sel] += 1
    assert bool((seen == 1).all())
    for sel, width in chunks[:-1]:  # with no padding bound only the last chunk runs out of tiles
        assert len(sel) == min(4000 // width, max(16, 500 // width))
    assert any(width < 40 and len(sel) == 16 for sel, width in chunks), "min_tiles above the key target"
    wide = [len(sel) for sel, width in chunks if width >= 900]
    assert max(wide) == 4  # 4000 // 1000 at most, although min_tiles asks for 16
    # without min_tiles the key target alone decides
    assert all(len(sel) * width <= 500 or len(sel) == 1
               for sel, width in sparse._pack_tiles(union, chunk_keys=500, max_padding=0.25))
    with pytest.raises(ValueError, match="min_chunk_tiles"):
        build_tile_plan_from_runs(torch.zeros(1, 4, 1, 2, dtype=torch.uint8), torch.ones(1, 4, 1, 2, dtype=torch.uint8),
                                  (2, 2), min_chunk_tiles=0)


@pytest.mark.parametrize("registers", [0, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bias_from_slot_intervals_equals_bias_from_the_sub_mask(registers, dtype):
    K, c2w = clip(1, 2, (32, 48))
    runs = geo.epipolar_runs(K, c2w, (32, 48), (4, 6), mode="all")
    plan = build_tile_plan_from_runs(runs.start, runs.end, (4, 6), chunk_keys=50, min_chunk_tiles=1)
    for c in plan.chunks:
        assert c.sub_mask is None and c.run_lo is not None
        from_mask = TileChunk(c.query_ids, c.key_ids, sub_mask=c.mask).bias(registers, dtype)
        got = c.bias(registers, dtype)
        assert got.dtype == dtype and got.shape == from_mask.shape
        assert torch.equal(got == 0, from_mask == 0) and bool(torch.isneginf(got[got != 0]).all())


def test_coverage_counts_unseen_keys_and_empty_queries_of_the_dense_masks():
    """``benchmarks/attention.py --parts coverage`` counts, per kind, the keys no query sees and the
    queries with no key: the same numbers as the dense masks' empty columns and rows."""
    bench = load_benchmark("attention")
    image_hw, feat_hw, T = (64, 64), (8, 8), 4
    K, c2w = bench.cameras(T, image_hw)
    for t in range(T):  # 0.8 rad of yaw per frame: some epipolar lines leave the reference frame
        a = 0.8 * t
        c2w[0, t, :3, :3] = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    got = bench.coverage({"image_hw": image_hw, "feat_hw": feat_hw, "frames": T}, K, c2w)
    assert set(got) == {"all", "ref", "cross"}
    assert got["ref"]["empty_rows"] > 0, "the cameras must give the count something to find"
    for kind, B in (("all", 1), ("ref", 1), ("cross", 2)):
        Kb, c2wb = K.repeat(B, 1, 1, 1), c2w.repeat(B, 1, 1, 1)
        if B > 1:
            c2wb[1, :, :3, 3] += torch.tensor([0.2, 0.0, 0.0])
        ctx = AttentionContext(K=Kb, c2w=c2wb, image_hw=image_hw, cond_index=torch.zeros(B, dtype=torch.long),
                               num_views=B, path="dense")
        mask = ctx.mask(kind, feat_hw)  # (N, Lq, Lk) dense bool
        want = {"queries": mask.shape[0] * mask.shape[1], "keys": mask.shape[0] * mask.shape[2],
                "unseen_keys": int((~mask.any(1)).sum()), "empty_rows": int((~mask.any(2)).sum())}
        assert got[kind] == want, kind


def test_public_references_of_the_attention_benchmark_compute_our_masked_attention():
    """The public computations ``benchmarks/attention.py`` takes every ratio against (CamI2V's
    reference-frame call cutting its mask out of the level's full mask; CVD's attention call with the
    float map repeated per head, alone and inside the module) give our dense path's outputs."""
    from camvid.attention import build_cross_frame_attention

    bench = load_benchmark("attention")
    image_hw, feat_hw, T, C, heads = (64, 64), (8, 8), 4, 64, 2
    K, c2w = bench.cameras(T, image_hw)
    g = torch.Generator().manual_seed(3)

    def filled(module):  # zero-initialised output layers would make every comparison trivial
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)
        return module.double()

    ref = filled(build_cross_frame_attention("epipolar_ref", C, heads))
    cond = torch.tensor([2])
    ctx = AttentionContext(K=K, c2w=c2w, image_hw=image_hw, cond_index=cond, num_views=1, path="dense")
    x = torch.randn(1, T, 64, C, generator=g, dtype=torch.float64)
    got = bench.public_ref_attention(x, ref.epipolar_attn, ctx.mask("all", feat_hw), cond).view_as(x)
    torch.testing.assert_close(got, ref(x, ctx, feat_hw))

    cv = filled(build_cross_frame_attention("cross_video", C, heads, norm_num_groups=32))
    Kb, c2wb = K.repeat(2, 1, 1, 1), c2w.repeat(2, 1, 1, 1)
    c2wb[1, :, :3, 3] += torch.tensor([0.2, 0.0, 0.0])
    ctx = AttentionContext(K=Kb, c2w=c2wb, image_hw=image_hw, cond_index=torch.zeros(2, dtype=torch.long),
                           num_views=2, path="dense")
    mask = ctx.mask("cross", feat_hw)
    bias_map = bench.band_bias(mask).double()
    kept = bias_map.clone()
    x = torch.randn(2, T, 64, C, generator=g, dtype=torch.float64)
    got = bench.public_cvd_module(x, cv, 2, lambda n, p, a: bench.public_cvd_attention(n, p, a, bias_map))
    torch.testing.assert_close(got, cv(x, ctx, feat_hw))
    block = cv.epi_transformer.transformer_blocks[0].attention_blocks[0]
    frames, partner = x.reshape(2 * T, 64, C), x.roll(-1, dims=0).reshape(2 * T, 64, C)
    torch.testing.assert_close(bench.public_cvd_attention(frames, partner, block, bias_map),
                               block(frames, partner, ctx, "cross", feat_hw))
    assert torch.equal(bias_map, kept)  # CVD's in-place nan_to_num leaves a finite map as it was
    assert bool((bias_map[~mask] == torch.finfo(torch.float32).min).all()) and bool((bias_map[mask] == 0).all())


def test_chunk_benchmark_builds_plans_of_each_size_and_restores_the_context_builder():
    import camvid.attention.context as context_mod

    bench = load_benchmark("blocksparse_chunks")
    before = context_mod.build_tile_plan_from_runs
    bins = sparse._BAND_ANGLE_BINS
    plans, n = bench.plans_for("ref", (64, 64), (8, 8), [1 << 16, 64], 1, per_frame=True)
    assert context_mod.build_tile_plan_from_runs is before and sparse._BAND_ANGLE_BINS == bins
    assert n == 1 and set(plans) == {(ck, t) for ck in (1 << 16, 64) for t in ("chosen", "per-frame")}
    assert len(plans[(64, "chosen")].chunks) > len(plans[(1 << 16, "chosen")].chunks)
    assert all(c.key_ids.numel() <= 64 or c.shape[0] == 1 for c in plans[(64, "chosen")].chunks)
    assert torch.equal(rebuilt_mask(plans[(1 << 16, "per-frame")]), rebuilt_mask(plans[(1 << 16, "chosen")]))


def test_kernel_ab_benchmark_compares_the_tree_with_a_revision():
    """benchmarks/blocksparse_ab.py: the working tree's kernel against the file at a git revision, same
    inputs; against HEAD of a clean tree both are the same computation."""
    mod = load_benchmark("blocksparse_ab")
    lines = mod.main(["HEAD", "--kinds", "ref", "--modes", "fwd", "--repeat", "1"])
    assert lines[-1].startswith("ref   fwd    HEAD:") and "tree/rev" in lines[-1]
    assert float(lines[-1].rsplit(" ", 1)[1]) < 1e-5  # an exact kernel at HEAD and in the tree
    with pytest.raises(SystemExit, match="git show no-such-rev"):
        mod.kernel_at("no-such-rev")


def test_fused_width_benchmark_times_forward_and_backward_per_key_count():
    """benchmarks/fused_widths.py: one row per key count, forward and backward times per tile."""
    mod = load_benchmark("fused_widths")
    rows = mod.main(["--keys", "7", "16", "--tiles", "2", "--queries", "4", "--heads", "1", "--dim", "8",
                     "--threads", "1", "--repeat", "1"])
    assert [r["keys"] for r in rows] == [7, 16]
    assert all(r["fwd_us"] > 0 and r["bwd_us"] > 0 for r in rows)
    with pytest.raises(SystemExit):
        mod.main(["--keys", "0"])


@pytest.mark.parametrize("variant", ["epipolar_ref", "cross_view"])
def test_attention_benchmark_times_the_kernel_alone_exact_against_dense(variant):
    """benchmarks/attention.py's attention-alone rows: our sparse kernel on the module's own q and k/v,
    checked against our dense masked attention on them; unmasked SDPA beside it; forward only."""
    bench = load_benchmark("attention")
    K, c2w = bench.cameras(4, (64, 64))
    spec = {"image_hw": (64, 64), "feat_hw": (8, 8), "frames": 4, "dim": 64, "heads": 2, "variant": variant,
            "repeat": 1, "paths": ["sparse"], "allocator": "system"}
    paths = bench.attention_level({**spec, "mode": "fwd"}, K, c2w)["paths"]
    assert {"public", "unmasked", "sparse", "kernel_sparse", "kernel_unmasked"} <= set(paths)
    assert paths["kernel_sparse"]["diff"] < 1e-5 and paths["sparse"]["diff"] < 1e-5
    from camvid.attention import cpu_kernel

    if cpu_kernel.available():  # the same kernel call with the fused forward beside the compiled one
        assert paths["kernel_sparse_fused"]["diff"] < 1e-5 and paths["sparse_fused"]["diff"] < 1e-5
        assert os.environ.get("CAMVID_SPARSE_KERNEL") != "fused"  # restored after each call
    assert math.isnan(paths["kernel_unmasked"]["diff"])  # another computation: nothing to compare
    assert all(p["time"] > 0 for p in paths.values())
    paths = bench.attention_level({**spec, "mode": "fwdbwd"}, K, c2w)["paths"]
    assert "kernel_sparse" not in paths and paths["sparse"]["diff"] < 1e-5
    if cpu_kernel.available():
        assert paths["sparse_fused"]["diff"] < 1e-5


@pytest.mark.parametrize("kind", ["ref", "cross"])
def test_band_tiles_of_several_sizes_compete_under_the_cost_model(monkeypatch, kind):
    """Kinds whose queries look into one key frame (``epipolar_ref``; ``cross_video``: the partner's
    frame) add band-sorted tilings of 1, 2 and 4 times the default tile; the cost model picks the
    default size when only computed pairs count, a bigger one when gathering a tile's keys and the
    tile itself cost much, and every plan keeps the exact mask."""
    bench = load_benchmark("attention")
    B = 2 if kind == "cross" else 1
    K, c2w = bench.cameras(8, (128, 128))
    K, c2w = K.repeat(B, 1, 1, 1), c2w.repeat(B, 1, 1, 1)
    if B > 1:
        c2w[1, :, :3, 3] += torch.tensor([0.2, 0.0, 0.0])
    ctx = AttentionContext(K=K, c2w=c2w, image_hw=(128, 128), cond_index=torch.zeros(B, dtype=torch.long),
                           num_views=B, path="sparse")
    runs = ctx.runs(kind, (16, 16))
    want = ctx.mask(kind, (16, 16))

    def chosen(gather, tile):
        monkeypatch.setattr(sparse, "tile_costs", lambda device, grad=False: (gather, tile))
        plan = build_tile_plan_from_runs(runs.start, runs.end, (16, 16))
        assert torch.equal(rebuilt_mask(plan).reshape(want.shape), want)
        return plan.chunks[0].query_ids.shape[1]

    assert chosen(0, 0) == 32  # pairs alone: the smallest tiles have the tightest hulls
    assert chosen(10_000, 1_000_000) == 128  # gathers and tiles dominate: the biggest band tiles
    monkeypatch.setattr(sparse, "_BAND_TILE_SCALES", (1,))
    assert chosen(10_000, 1_000_000) == 32  # no bigger candidates: every tiling has 32 queries


def test_cost_model_takes_the_constants_of_the_kernel_that_will_run(monkeypatch):
    """The compiled CPU kernel's forward has no gather or per-tile cost: computed pairs alone; the fused
    kernel (CAMVID_SPARSE_KERNEL=fused, CUDA, and every backward pass: plans built while gradients are
    recorded) weighs gathered rows and tiles."""
    from camvid.attention import cpu_kernel

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    fused = (sparse.GATHER_ROW_PAIRS, sparse.TILE_PAIRS)
    compiled = (sparse.COMPILED_GATHER_ROW_PAIRS, sparse.COMPILED_TILE_PAIRS)
    assert compiled != fused
    monkeypatch.setenv("CAMVID_SPARSE_KERNEL", "fused")
    assert sparse.tile_costs(cpu) == fused and sparse.tile_costs(cuda) == fused
    monkeypatch.setenv("CAMVID_SPARSE_KERNEL", "auto")
    assert sparse.tile_costs(cuda) == fused
    assert sparse.tile_costs(cpu) == (compiled if cpu_kernel.available() else fused)
    assert sparse.tile_costs(cpu, grad=True) == fused


def test_band_tile_benchmark_forces_each_size():
    """benchmarks/blocksparse_chunks.py --band-tiles: one epipolar_ref plan per tile size, each exact."""
    from camvid.attention.sparse import _candidate_tiles

    bench = load_benchmark("blocksparse_chunks")
    plans = bench.band_tile_plans((128, 128), (16, 16), [32, 64, 128])
    assert sparse._candidate_tiles is _candidate_tiles  # restored
    assert {n: p.chunks[0].query_ids.shape[1] for n, p in plans.items()} == {32: 32, 64: 64, 128: 128}
    masks = [rebuilt_mask(p) for p in plans.values()]
    assert all(torch.equal(m, masks[0]) for m in masks[1:])


def test_band_tile_benchmark_times_each_size_with_the_models_cost():
    import argparse

    bench = load_benchmark("blocksparse_chunks")
    args = argparse.Namespace(band_levels=["256x256:16x16"], band_tiles=[32, 64, 128], repeat=1)
    rows = bench.band_tiles(args)
    assert [r["queries"] for r in rows] == [32, 64, 128]
    assert all(r["ms"] > 0 and r["step_ms"] > 0 for r in rows)
    assert [r["tiles"] for r in rows] == [rows[0]["tiles"] // k for k in (1, 2, 4)]
    gather, per_tile = sparse.tile_costs(torch.device("cpu"))
    assert all(r["model"] == r["pairs"] + gather * r["rows"] + per_tile * r["tiles"] for r in rows)


def test_attention_benchmark_floor_of_the_cross_video_module_is_its_matrix_products(monkeypatch):
    """benchmarks/attention.py's ``matmuls`` row for the whole ``cross_video`` module: every Linear of
    the module once (forward), plus its input and weight gradients (forward+backward), with the
    module's weights, on buffers made before the call; the row sits beside the module's paths."""
    from torch import nn

    from camvid.attention import build_cross_frame_attention

    bench = load_benchmark("attention")
    cv = build_cross_frame_attention("cross_video", 64, 2, norm_num_groups=32)
    linears = sorted(tuple(m.weight.shape) for m in cv.modules() if isinstance(m, nn.Linear))
    assert len(linears) == 12
    mm, seen = torch.mm, []

    def counted_mm(a, b, out):
        seen.append((tuple(a.shape), tuple(b.shape)))
        return mm(a, b, out=out)

    for backward, per_layer in ((False, 1), (True, 3)):
        run = bench.module_matmuls(cv, 10, backward)
        seen.clear()
        monkeypatch.setattr(torch, "mm", counted_mm)
        y = run()
        monkeypatch.setattr(torch, "mm", mm)
        assert len(seen) == 12 * per_layer
        assert sorted((b[1], b[0]) for _, b in seen[::per_layer]) == linears  # a @ W^T for every Linear
        w = cv.epi_transformer.proj_out.weight  # the last product, exact
        a = run.buffers[("in", 10, 64)]
        torch.testing.assert_close(y, a @ w.detach().t())
        if backward:
            torch.testing.assert_close(run.buffers[("grad_in", 10, 64)], y @ w.detach())
            torch.testing.assert_close(run.buffers[("grad_w", 64, 64)], y.t() @ a)
    K, c2w = bench.cameras(4, (64, 64))
    spec = {"image_hw": (64, 64), "feat_hw": (8, 8), "frames": 4, "dim": 64, "heads": 2, "variant": "cross_video",
            "repeat": 1, "paths": ["sparse"], "allocator": "system"}
    for mode in ("fwd", "fwdbwd"):
        paths = bench.attention_level({**spec, "mode": mode}, K, c2w)["paths"]
        assert {"public", "projections", "matmuls", "sparse"} <= set(paths)
        assert paths["sparse"]["diff"] < 1e-5 and math.isnan(paths["matmuls"]["diff"])
        assert all(p["time"] > 0 for p in paths.values())
