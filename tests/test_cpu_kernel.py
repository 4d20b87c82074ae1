"""The compiled CPU kernel of the block-sparse forward (``camvid.attention.cpu_kernel``,
``tile_attention.c``): exact against dense attention in float32 (outputs, and gradients through the
fused kernel's backward fed its outputs and log-sum-exp), empty rows, odd head sizes and tile sizes,
the same values as the fused path, and the fallback when no compiler works."""

import pytest
import torch

from camvid.attention import blocksparse, cpu_kernel
from camvid.attention.sparse import TileChunk, TilePlan
from conftest import dense_reference

pytestmark = pytest.mark.skipif(not cpu_kernel.available(), reason="no C compiler here: the fused path runs")


def random_plan(g, Lk, chunks_spec, empty_query=True):
    """Tiles of Q queries with U random keys each and a random sub-mask (query 0 of every first tile
    sees no key); every query in exactly one tile."""
    chunks, at = [], 0
    for n, Q, U in chunks_spec:
        key_ids = torch.stack([torch.randperm(Lk, generator=g)[:U] for _ in range(n)])
        sub = torch.rand(n, Q, U, generator=g) < 0.4
        if empty_query:
            sub[0, 0] = False
        chunks.append(TileChunk(torch.arange(at, at + n * Q).view(n, Q), key_ids, sub_mask=sub))
        at += n * Q
    return TilePlan(batch=1, num_queries=at, num_keys=Lk, chunks=chunks, row_valid=torch.ones(at, dtype=torch.bool))


@pytest.mark.parametrize("R", [0, 3])
@pytest.mark.parametrize("H,D", [(2, 64), (3, 40), (1, 20)])
def test_compiled_forward_and_gradients_equal_dense_attention(R, H, D, monkeypatch):
    """Tile widths below, at and above multiples of 16 (the kernel pads them), query counts that are
    not multiples of 4, head sizes of 64 (DynamiCrafter, CVD), 40 (AnimateDiff's motion module) and 20."""
    monkeypatch.setenv("CAMVID_SPARSE_KERNEL", "compiled")
    g = torch.Generator().manual_seed(11 + R + D)
    plan = random_plan(g, 70, [(3, 32, 5), (2, 7, 16), (4, 5, 33), (1, 128, 70)])
    q = torch.randn(plan.num_queries, H, D, generator=g, requires_grad=True)
    kv = torch.randn(R + plan.num_keys, 2, H, D, generator=g, requires_grad=True)
    assert cpu_kernel.usable(q, kv)
    got = blocksparse._BlockSparseAttention.apply(q, kv, R, plan)
    want, valid = dense_reference(plan, q, kv, R)
    assert (got.double() - want).abs().max() <= 1e-5
    if not R:
        assert not bool(valid.all()) and torch.equal(got[~valid], torch.zeros_like(got[~valid]))
    w = torch.randn(got.shape, generator=g)
    for a, b in zip(torch.autograd.grad((got * w).sum(), (q, kv)),
                    torch.autograd.grad((want * w.double()).sum(), (q, kv))):
        assert (a.double() - b).abs().max() <= 1e-5 * max(1.0, float(b.abs().max()))
    if not R:
        gq, = torch.autograd.grad(blocksparse._BlockSparseAttention.apply(q, kv, R, plan).sum(), q)
        assert torch.equal(gq[~valid], torch.zeros_like(gq[~valid]))  # an empty row passes no gradient


def test_compiled_and_fused_paths_agree_on_a_real_plan_and_strided_kv(monkeypatch):
    """A cross-video plan of the context at 16x16, keys and values as the strided k/v columns of a fused
    q/k/v projection (the module's layout); the compiled kernel reads them in place."""
    from tests.test_attention_paths import cameras

    from camvid.attention import AttentionContext

    K, c2w = cameras(2, (128, 128), dtype=torch.float32)
    ctx = AttentionContext(K=K, c2w=c2w, image_hw=(128, 128), num_views=2, path="sparse")
    plan = ctx.tile_plan("cross", (16, 16))
    N = plan.batch
    g = torch.Generator().manual_seed(5)
    qkv = torch.randn(N * 256, 3, 2, 32, generator=g)
    q, kv = qkv[:, 0], qkv[:, 1:]
    assert kv.stride(0) == 3 * 64 and not kv.is_contiguous()
    outs = {}
    for mode in ("compiled", "fused"):
        monkeypatch.setenv("CAMVID_SPARSE_KERNEL", mode)
        assert cpu_kernel.usable(q, kv) == (mode == "compiled")
        outs[mode] = blocksparse.block_sparse_attention_packed(q.view(N, 256, 2, 32), kv.view(N, 256, 2, 2, 32), plan)
    assert (outs["compiled"] - outs["fused"]).abs().max() <= 1e-5


def test_kernel_takes_only_what_it_can_read_in_place(monkeypatch):
    monkeypatch.setenv("CAMVID_SPARSE_KERNEL", "auto")
    q, kv = torch.randn(8, 2, 16), torch.randn(8, 2, 2, 16)
    assert cpu_kernel.usable(q, kv)
    assert not cpu_kernel.usable(q.double(), kv.double())  # float32 only: other dtypes take the fused kernel
    assert not cpu_kernel.usable(q.transpose(1, 2).contiguous().transpose(1, 2), kv)  # channels not contiguous
    monkeypatch.setenv("CAMVID_SPARSE_KERNEL", "fused")
    assert not cpu_kernel.usable(q, kv) and not cpu_kernel.available()
    monkeypatch.setenv("CAMVID_SPARSE_KERNEL", "fast")
    with pytest.raises(ValueError, match="CAMVID_SPARSE_KERNEL='fast': choose one of auto, compiled, fused"):
        cpu_kernel.kernel_mode()


def test_a_missing_compiler_falls_back_with_one_warning_or_fails_when_required(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu_kernel, "_STATE", {})
    monkeypatch.setenv("CAMVID_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("CAMVID_SPARSE_KERNEL", "auto")
    with pytest.warns(RuntimeWarning, match="no-such-cc.*is not on PATH.*PyTorch's fused kernel instead"):
        assert cpu_kernel.load_kernel() is None
    g = torch.Generator().manual_seed(2)
    plan = random_plan(g, 20, [(2, 8, 6)])
    q, kv = torch.randn(16, 2, 16, generator=g), torch.randn(20, 2, 2, 16, generator=g)
    assert not cpu_kernel.usable(q, kv)
    got = blocksparse._BlockSparseAttention.apply(q, kv, 0, plan)  # the fused path, the same values
    assert (got.double() - dense_reference(plan, q, kv, 0)[0]).abs().max() <= 1e-5
    monkeypatch.setenv("CAMVID_SPARSE_KERNEL", "compiled")
    with pytest.raises(RuntimeError, match="CAMVID_SPARSE_KERNEL=compiled, but the kernel cannot be built"):
        cpu_kernel.load_kernel()
    assert list(tmp_path.iterdir()) == []


def test_build_is_cached_by_source_flags_compiler_and_cpu(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu_kernel, "_STATE", {})
    monkeypatch.setenv("CAMVID_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CAMVID_SPARSE_KERNEL", "compiled")
    assert cpu_kernel.load_kernel() is not None
    built = list(tmp_path.glob("tile_attention-*.so"))
    assert len(built) == 1 and not [p for p in tmp_path.iterdir() if p.is_dir()]  # no build folder left
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(cpu_kernel, "_STATE", {})
    cpu_kernel.load_kernel()  # the same build: loaded, not compiled again
    assert built[0].stat().st_mtime_ns == stamp
    monkeypatch.setattr(cpu_kernel, "_STATE", {})
    monkeypatch.setattr(cpu_kernel, "_cpu_fingerprint", lambda: "flags : another cpu")
    cpu_kernel.load_kernel()  # another CPU (a shared home directory): its own build
    assert len(list(tmp_path.glob("tile_attention-*.so"))) == 2


def _forward_in_child(conn, q, kv, plan, want):
    import numpy as np  # compared with numpy: a torch op with an OpenMP region could hang in a forked child

    out = blocksparse._BlockSparseAttention.apply(q, kv, 0, plan)
    conn.send(bool(np.array_equal(out.numpy(), want.numpy())))
    conn.close()


def test_threads_split_tiles_without_changing_a_value_and_a_forked_child_gets_its_own(monkeypatch):
    """Every tile is computed whole by one thread: 1 or 2 threads give the same bits. A forked process
    (a data loader worker) does not inherit the parent's worker threads; it starts its own pool."""
    import multiprocessing as mp

    monkeypatch.setenv("CAMVID_SPARSE_KERNEL", "compiled")
    g = torch.Generator().manual_seed(8)
    plan = random_plan(g, 60, [(16, 32, 17), (8, 32, 40)])
    q = torch.randn(plan.num_queries, 2, 32, generator=g)
    kv = torch.randn(plan.num_keys, 2, 2, 32, generator=g)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = blocksparse._BlockSparseAttention.apply(q, kv, 0, plan)
        torch.set_num_threads(2)
        two = blocksparse._BlockSparseAttention.apply(q, kv, 0, plan)  # the parent's pool of 2 now exists
        assert torch.equal(one, two)
        parent, child = mp.get_context("fork").Pipe()
        proc = mp.get_context("fork").Process(target=_forward_in_child, args=(child, q, kv, plan, two), daemon=True)
        proc.start()
        try:
            assert parent.poll(60), "the forked child's kernel call did not return"
            assert parent.recv() is True
        finally:
            proc.kill()
    finally:
        torch.set_num_threads(threads)


def test_prepare_plan_makes_the_kernel_descriptors_before_the_first_call(monkeypatch):
    monkeypatch.setenv("CAMVID_SPARSE_KERNEL", "compiled")
    plan = random_plan(torch.Generator().manual_seed(3), 30, [(2, 8, 6)])
    blocksparse.prepare_plan(plan, 2, torch.float32)
    arr, keep, queries = plan._c_descriptors[2]
    assert queries == plan.num_queries and [d.W for d in arr] == [8]  # 2 registers + 6 keys (padded in the kernel)
    q, kv = torch.randn(16, 1, 16), torch.randn(2 + 30, 2, 1, 16)
    blocksparse._BlockSparseAttention.apply(q, kv, 2, plan)
    assert plan._c_descriptors[2][0] is arr  # used, not remade
