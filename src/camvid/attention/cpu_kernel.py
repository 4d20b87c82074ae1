"""The compiled CPU kernel of the block-sparse forward pass (``tile_attention.c``), loaded through ctypes.

``blocksparse`` runs a plan's tiles through PyTorch's fused CPU attention kernel, which needs each
tile's queries, keys and values as dense blocks: a query permutation, a key/value gather per chunk
and an output scatter around it, and a per-call cost that small tiles (32 queries x 32-49 keys for
``cross_video``) pay a thousand times per level. ``tile_attention.c`` reads the queries, keys and
values where they are (by row id) and writes each output row in place; one thread per core takes
tiles from a shared counter. Forward only: the backward pass stays on the fused
kernel's backward (``blocksparse``), fed the outputs and log-sum-exp this kernel returns in the
fused kernel's layout.

The source is compiled on first use with the system C compiler (``$CC``, else ``cc``; ``-O3
-march=native``) into ``$CAMVID_KERNEL_CACHE`` (default ``~/.cache/camvid/kernels``), named by a
hash of the source, the flags, the compiler and this CPU's instruction-set flags, so a home
directory shared by nodes of different CPUs keeps one build per kind of node. Where no compiler
works the fused kernel path runs instead (one warning, naming the compiler's error).
``CAMVID_SPARSE_KERNEL=fused`` chooses the fused path always, ``compiled`` requires this kernel
(an error when it cannot be built), ``auto`` (default) uses it when it builds.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

__all__ = ["available", "descriptors", "kernel_mode", "load_kernel", "serves", "tile_attention_forward", "usable"]

SOURCE = Path(__file__).with_name("tile_attention.c")
FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-std=gnu11", "-ffp-contract=fast", "-fno-math-errno"]
MODES = ("auto", "compiled", "fused")
GRAIN = 8  # tiles a thread takes at a time
LANES = 16  # floats per vector in tile_attention.c


class _Chunk(ctypes.Structure):
    _fields_ = [("qids", ctypes.c_void_p), ("kids", ctypes.c_void_p), ("bias", ctypes.c_void_p),
                ("n", ctypes.c_int64), ("Q", ctypes.c_int64), ("W", ctypes.c_int64),
                ("first_unit", ctypes.c_int64), ("lse_offset", ctypes.c_int64)]


def kernel_mode() -> str:
    mode = os.environ.get("CAMVID_SPARSE_KERNEL", "auto")
    if mode not in MODES:
        raise ValueError(f"CAMVID_SPARSE_KERNEL={mode!r}: choose one of {', '.join(MODES)}")
    return mode


def _cpu_fingerprint() -> str:
    """The instruction-set flags of this CPU (``-march=native`` compiles for exactly these)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    root = os.environ.get("CAMVID_KERNEL_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "camvid" / "kernels"


_LOCK = threading.Lock()
_STATE: dict = {}


def _build() -> ctypes.CDLL:
    cc = os.environ.get("CC") or "cc"
    if shutil.which(cc) is None:
        raise RuntimeError(f"no C compiler: {cc!r} is not on PATH (set CC to one)")
    source = SOURCE.read_bytes()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    tag = hashlib.sha256(b"\0".join([source, " ".join(FLAGS).encode(), cc.encode(), version.encode(),
                                      _cpu_fingerprint().encode(), platform.machine().encode()])).hexdigest()[:16]
    target = _cache_dir() / f"tile_attention-{tag}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:  # build beside, then rename: atomic
            built = Path(tmp) / target.name
            res = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", str(built), "-lm"], capture_output=True, text=True)
            if res.returncode:
                raise RuntimeError(f"{cc} could not compile {SOURCE.name}: {res.stderr.strip()[-2000:]}")
            os.replace(built, target)
    lib = ctypes.CDLL(str(target))
    fn = lib.camvid_tile_attention
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.POINTER(_Chunk), ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                   ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                   ctypes.c_int64, ctypes.c_void_p, ctypes.c_float, ctypes.POINTER(ctypes.c_int64), ctypes.c_int64]
    return lib


def load_kernel():
    """The compiled kernel's library, or None where it cannot be built (``auto``: warns once with the
    reason; ``compiled``: raises it)."""
    mode = kernel_mode()
    if mode == "fused":
        return None
    with _LOCK:
        if "lib" not in _STATE:
            try:
                _STATE["lib"], _STATE["error"] = _build(), None
            except (RuntimeError, OSError) as err:
                _STATE["lib"], _STATE["error"] = None, err
                if mode == "auto":
                    warnings.warn(f"camvid: the compiled sparse attention kernel is unavailable ({err}); the "
                                  "sparse path uses PyTorch's fused kernel instead", RuntimeWarning, stacklevel=3)
    if _STATE["lib"] is None and mode == "compiled":
        raise RuntimeError(f"CAMVID_SPARSE_KERNEL=compiled, but the kernel cannot be built: {_STATE['error']}")
    return _STATE["lib"]


def serves(device, dtype: torch.dtype) -> bool:
    """Whether the sparse path's forward runs on this kernel for tensors of ``device`` and ``dtype``:
    CPU, float32, not ``CAMVID_SPARSE_KERNEL=fused``, and the kernel builds here."""
    return torch.device(device).type == "cpu" and dtype == torch.float32 and available()


def usable(q: torch.Tensor, kv: torch.Tensor) -> bool:
    """Whether the compiled kernel takes these inputs: :func:`serves` their device and dtype, and each
    row's heads and channels are contiguous."""
    if kv.dtype != q.dtype or not serves(q.device, q.dtype):
        return False
    H, D = q.shape[1:]
    return q.stride(2) == 1 and q.stride(1) == D and kv.stride(3) == 1 and kv.stride(2) == D


def descriptors(plan, R: int, inputs):
    """The chunks' C descriptors, kept on the plan with the tensors they point into (made once per
    plan and register count: every layer and head of the level reuses them), and the number of queries.
    ``inputs()`` gives each chunk's key row ids and (n, 1, Q, W) additive bias (``blocksparse``)."""
    cache = plan.__dict__.setdefault("_c_descriptors", {})
    if R not in cache:
        arr = (_Chunk * len(plan.chunks))()
        keep, unit, off = [], 0, 0
        for slot, c, (kids, bias) in zip(arr, plan.chunks, inputs()):
            n, Q = c.query_ids.shape
            W = bias.shape[-1]  # the kernel pads each tile to 16 keys itself: no copies of these here
            qids, kids, bias = c.query_ids.contiguous(), kids.contiguous(), bias.contiguous()
            keep += [qids, kids, bias]
            slot.qids, slot.kids, slot.bias = qids.data_ptr(), kids.data_ptr(), bias.data_ptr()
            slot.n, slot.Q, slot.W, slot.first_unit, slot.lse_offset = n, Q, W, unit, off
            unit += n
            off += n * Q
        cache.clear()  # one register count per level in practice: keep one set
        cache[R] = (arr, keep, off)
    return cache[R]


def available() -> bool:
    """Whether CPU float32 block-sparse attention runs on this kernel here (mode and build)."""
    return kernel_mode() != "fused" and load_kernel() is not None


_POOL: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _pool(threads: int) -> ThreadPoolExecutor:
    """Worker threads for the C loop, per process (a forked child, e.g. a data loader worker, does not
    inherit the parent's threads: it starts its own pool)."""
    key = (os.getpid(), threads)
    with _LOCK:
        if key not in _POOL:
            _POOL[key] = ThreadPoolExecutor(threads, thread_name_prefix="camvid-tiles")
        return _POOL[key]


def tile_attention_forward(q: torch.Tensor, kv: torch.Tensor, R: int, plan, inputs, with_lse: bool = True):
    """q (Nq, H, D), kv (rows, 2, H, D) (per sample its ``R`` register rows then its keys) -> out (Nq, H,
    D) in query order, and the log-sum-exp (None unless ``with_lse``): one flat buffer holding each
    chunk's (n, H, Q) block, chunk after chunk (the fused kernel's layout). ``inputs()`` gives each
    chunk's key row ids and additive bias (see ``descriptors``)."""
    lib = load_kernel()
    Nq, H, D = q.shape
    arr, _, queries = descriptors(plan, R, inputs)
    out = q.new_empty(Nq, H, D)
    lse = q.new_empty(queries * H) if with_lse else None
    counter = ctypes.c_int64(0)
    threads = max(1, min(torch.get_num_threads(), os.cpu_count() or 1))
    args = (arr, len(arr), H, D, q.data_ptr(), q.stride(0), kv.data_ptr(), kv.stride(0), kv.stride(1),
            out.data_ptr(), out.stride(0), None if lse is None else lse.data_ptr(), D ** -0.5,
            ctypes.byref(counter), GRAIN)
    if threads == 1:
        status = [lib.camvid_tile_attention(*args)]
    else:  # ctypes releases the GIL during the call: the threads run the C loop side by side
        status = [f.result() for f in [_pool(threads).submit(lib.camvid_tile_attention, *args)
                                       for _ in range(threads)]]
    if any(status):
        raise MemoryError("tile_attention: a thread could not allocate its tile buffers")
    return out, lse
