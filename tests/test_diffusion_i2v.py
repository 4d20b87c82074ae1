"""x0-parameterization and first-frame replacement (camvid.diffusion.i2v) on the tiny DynamiCrafter."""

from __future__ import annotations

import pytest
import torch

from camvid.diffusion.ddim import DDIMSchedule, ddim_step
from camvid.diffusion.i2v import exact_conditioning_output, replace_conditioning_frame
from camvid.diffusion.sampler import sample_video
from camvid.diffusion.schedule import make_alphas_cumprod, predict_x0_eps, q_sample, training_target
from camvid.models.dynamicrafter import build_dynamicrafter_method

T, H = 4, 16


def _batch(cond_index: int = 0) -> dict:
    g = torch.Generator().manual_seed(0)
    c2w = torch.eye(4).expand(1, T, 4, 4).clone()
    c2w[0, :, 0, 3] = torch.linspace(0, 0.3, T)
    K = torch.tensor([[16.0, 0, 8], [0, 16.0, 8], [0, 0, 1]])
    return {"video": torch.rand(1, T, 3, H, H, generator=g) * 2 - 1, "K": K.expand(1, T, 3, 3).clone(),
            "c2w": c2w, "cond_index": torch.tensor([cond_index]), "frame_stride": torch.tensor([1]),
            "caption": ["a room"], "num_views": 1}


def _model(**kwargs):
    torch.manual_seed(0)
    return build_dynamicrafter_method("cami2v", "tiny", num_frames=T, image_hw=(H, H), **kwargs).eval()


def test_x0_parameterization_round_trips():
    ac = make_alphas_cumprod(1000)
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 3, 4, generator=g, dtype=torch.float64), torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([10, 900])
    z = q_sample(x0, t, eps, ac)
    assert torch.equal(training_target(x0, eps, t, ac, "x0"), x0)
    x0_hat, eps_hat = predict_x0_eps(x0, z, t, ac, "x0")
    torch.testing.assert_close(eps_hat, eps)
    # a DDIM step fed the true x0 lands where the eps-parameterized step fed the true eps lands
    sched = DDIMSchedule.create(ac, 10)
    z9 = q_sample(x0, sched.timesteps[0], eps, ac)
    a, _ = ddim_step(z9, x0, sched, 0, parameterization="x0")
    b, _ = ddim_step(z9, eps, sched, 0, parameterization="eps")
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("parameterization", ["eps", "v", "x0"])
def test_exact_output_at_the_conditioning_frame(parameterization):
    ac = make_alphas_cumprod(1000)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(2, 3, T, 5, 5, generator=g)
    eps = torch.randn(2, 3, T, 5, 5, generator=g)
    t, ci = torch.tensor([100, 700]), torch.tensor([0, 2])
    z = q_sample(x0, t, eps, ac)
    cond = x0[torch.arange(2), :, ci]
    out = exact_conditioning_output(torch.zeros_like(z), z, t, cond, ci, ac, parameterization)
    want = training_target(x0, eps, t, ac, parameterization)
    for b in range(2):
        torch.testing.assert_close(out[b, :, ci[b]], want[b, :, ci[b]], atol=1e-4, rtol=1e-4)
        others = [f for f in range(T) if f != ci[b]]
        assert torch.all(out[b, :, others] == 0)
    replaced = replace_conditioning_frame(z, cond, ci)
    assert torch.equal(replaced[1, :, 2], cond[1]) and torch.equal(replaced[1, :, 0], z[1, :, 0])


def test_replaced_first_frame_comes_back_exactly():
    m = _model(parameterization="x0", first_frame="replace")
    batch = _batch()
    out = sample_video(m, batch, num_steps=5, generator=torch.Generator().manual_seed(0), set_alpha_to_one=True)
    torch.testing.assert_close(out[0, 0], batch["video"][0, 0], atol=1e-5, rtol=0)
    # in training the denoiser's output at that frame is the exact target: zero loss there
    x0 = m.encode_video(batch["video"])
    cond = m.conditions(batch, x0)
    z = q_sample(x0, torch.tensor([600]), torch.randn_like(x0), m.alphas_cumprod)
    out = m.denoise(z, torch.tensor([600]), cond)
    torch.testing.assert_close(out[:, :, 0], x0[:, :, 0])
    assert not torch.allclose(out[:, :, 1], x0[:, :, 1])


def test_residual_model_starts_as_the_still_video():
    """replace_residual: a network that outputs zero predicts the conditioning frame repeated."""
    m = _model(parameterization="x0", first_frame="replace_residual")
    unet = m.model.diffusion_model
    unet.forward = lambda x, *a, **k: torch.zeros_like(x[:, : x.shape[1] // 2])
    batch = _batch(cond_index=1)
    out = sample_video(m, batch, num_steps=4, generator=torch.Generator().manual_seed(0), set_alpha_to_one=True)
    still = batch["video"][0, 1].expand(T, -1, -1, -1)
    torch.testing.assert_close(out[0], still, atol=1e-5, rtol=0)


def test_bad_first_frame_settings_are_named():
    with pytest.raises(ValueError, match="first_frame='sideways'"):
        _model(first_frame="sideways")
    with pytest.raises(ValueError, match="needs parameterization='x0'"):
        _model(parameterization="eps", first_frame="replace_residual")
    with pytest.raises(ValueError, match="unknown parameterization 'z'"):
        _model(parameterization="z")
