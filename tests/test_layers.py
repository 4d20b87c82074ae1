"""camvid.layers: the feed-forward shared by DynamiCrafter's UNet, the pose encoder and CVD's module.
Its gate is one autograd function with the three PyTorch ops' values and gradients, keeping less
memory for the backward pass; the checkpoint keys stay ``net.0.proj`` and ``net.2``."""

import pytest
import torch
import torch.nn.functional as F

from camvid import layers
from conftest import load_benchmark


def three_ops(proj):
    h, gate = proj.chunk(2, dim=-1)
    return h * F.gelu(gate)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gated_gelu_has_the_values_and_gradients_of_the_three_ops(dtype):
    g = torch.Generator().manual_seed(0)
    proj = (torch.randn(3, 7, 2 * 24, generator=g, dtype=dtype) * 3).requires_grad_()
    w = torch.randn(3, 7, 24, generator=g, dtype=dtype)
    got, want = layers.gated_gelu(proj), three_ops(proj)
    assert torch.equal(got, want)  # the same product in the same order: bit for bit
    (g_got,) = torch.autograd.grad((got * w).sum(), proj)
    (g_want,) = torch.autograd.grad((want * w).sum(), proj)
    torch.testing.assert_close(g_got, g_want, rtol=0, atol=0 if dtype == torch.float64 else 1e-6)
    strided = proj.transpose(0, 1)  # a non-contiguous input and gradient
    (g_s,) = torch.autograd.grad((layers.gated_gelu(strided) * w.transpose(0, 1)).sum(), proj)
    torch.testing.assert_close(g_s, g_want, rtol=0, atol=1e-6)
    assert torch.autograd.gradcheck(layers.gated_gelu, (proj[:1, :2].detach().double().requires_grad_(),))


def test_gated_gelu_rejects_an_odd_width_and_double_backward():
    with pytest.raises(ValueError, match="even last dimension"):
        layers.gated_gelu(torch.zeros(2, 5))
    proj = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(layers.gated_gelu(proj).sum(), proj, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad|not implemented"):
        grad.sum().backward()


def test_gate_keeps_only_the_projection_for_the_backward_pass():
    bench = load_benchmark("feedforward")
    proj = torch.randn(64, 2 * 32, requires_grad=True)
    fused = bench.saved_bytes(lambda: layers.gated_gelu(proj))
    plain = bench.saved_bytes(lambda: three_ops(proj))
    assert fused == proj.numel() * 4  # the projection's output alone
    assert plain == fused + 64 * 32 * 4  # plus gelu(gate)


def test_feedforward_keeps_the_checkpoint_keys_and_its_users_share_it():
    from camvid.attention.variants import CrossVideoBlock
    from camvid.models.dynamicrafter.blocks import BasicTransformerBlock

    ff = layers.FeedForward(8)
    assert {k: tuple(v.shape) for k, v in ff.state_dict().items()} == {
        "net.0.proj.weight": (64, 8), "net.0.proj.bias": (64,), "net.2.weight": (8, 32), "net.2.bias": (8,)}
    assert type(CrossVideoBlock(64, 2).ff) is layers.FeedForward
    assert type(BasicTransformerBlock(64, 2, 32).ff) is layers.FeedForward
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(ff(x), ff.net[2](three_ops(ff.net[0].proj(x))), rtol=0, atol=0)


def test_feedforward_benchmark_reports_both_gates():
    rows = load_benchmark("feedforward").main(["--tokens", "64", "--dim", "16", "--threads", "1", "--repeat", "1"])
    assert [r["gate"] for r in rows] == ["three ops", "gated_gelu"]
    assert all(r["wall"] > 0 and r["faults"] >= 0 for r in rows)
    assert rows[1]["saved"] < rows[0]["saved"]
    with pytest.raises(SystemExit):
        load_benchmark("feedforward").main(["--tokens", "0"])
