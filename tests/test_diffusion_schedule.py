"""Noise schedules, x0/eps/v relations and DDIM, checked against closed forms, an oracle denoiser
and diffusers' DDIMScheduler."""

import math

import pytest
import torch

from camvid.diffusion.ddim import (
    DDIMSchedule,
    ddim_sample,
    ddim_step,
    ddim_timesteps,
    diffusers_ddim_scheduler,
)
from camvid.diffusion.schedule import (
    dynamic_rescale_scales,
    eps_from_v,
    eps_from_x0,
    make_alphas_cumprod,
    make_betas,
    q_sample,
    training_target,
    v_from_x0_eps,
    x0_from_eps,
    x0_from_v,
)


def test_scaled_linear_betas_match_closed_form():
    betas = make_betas(1000, "scaled_linear", 0.00085, 0.012)
    i = torch.arange(1000, dtype=torch.float64)
    expected = (math.sqrt(0.00085) + i * (math.sqrt(0.012) - math.sqrt(0.00085)) / 999) ** 2
    torch.testing.assert_close(betas, expected, rtol=1e-12, atol=0)
    ac = make_alphas_cumprod()
    assert ac.dtype == torch.float64 and ac.shape == (1000,)
    assert ac[0].item() == pytest.approx(1 - 0.00085, abs=1e-15)
    torch.testing.assert_close(ac, torch.cumprod(1 - expected, 0))
    # the well-known SD / DynamiCrafter terminal value
    assert ac[-1].item() == pytest.approx(0.0046600, abs=1e-6)


def test_plain_linear_betas():
    betas = make_betas(10, "linear", 0.001, 0.01)
    torch.testing.assert_close(betas, torch.linspace(0.001, 0.01, 10, dtype=torch.float64))


def test_zero_terminal_snr_rescale():
    ac = make_alphas_cumprod(zero_terminal_snr=True)
    base = make_alphas_cumprod()
    assert ac[-1].item() == pytest.approx(0.0, abs=1e-20)
    assert ac[0].item() == pytest.approx(base[0].item(), rel=1e-12)
    assert bool((ac[1:] < ac[:-1]).all())
    # sqrt(alphas_cumprod) is an affine map of the original one (shift to 0, keep the first value)
    s, s0 = ac.sqrt(), base.sqrt()
    expected = (s0 - s0[-1]) * s0[0] / (s0[0] - s0[-1])
    torch.testing.assert_close(s, expected)


def test_bad_schedule_options_raise():
    with pytest.raises(ValueError, match="beta_schedule"):
        make_betas(1000, "cosine")
    with pytest.raises(ValueError, match="beta_start"):
        make_betas(1000, "linear", 0.02, 0.01)


def test_dynamic_rescale_scales():
    s = dynamic_rescale_scales(1000, 0.7, 400)
    assert s[0] == 1.0 and s[399].item() == pytest.approx(0.7) and bool((s[400:] == 0.7).all())


def test_conversions_invert():
    g = torch.Generator().manual_seed(0)
    ac = make_alphas_cumprod()
    x0 = torch.randn(5, 4, 3, 2, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 900, 999])
    z = q_sample(x0, t, eps, ac)
    a = ac[t].reshape(-1, 1, 1, 1, 1)
    torch.testing.assert_close(z, a.sqrt() * x0 + (1 - a).sqrt() * eps)
    v = v_from_x0_eps(x0, eps, t, ac)
    torch.testing.assert_close(v, a.sqrt() * eps - (1 - a).sqrt() * x0)
    torch.testing.assert_close(x0_from_eps(z, eps, t, ac), x0)
    torch.testing.assert_close(eps_from_x0(z, x0, t, ac), eps)
    torch.testing.assert_close(x0_from_v(z, v, t, ac), x0)
    torch.testing.assert_close(eps_from_v(z, v, t, ac), eps)
    torch.testing.assert_close(training_target(x0, eps, t, ac, "v"), v)
    assert training_target(x0, eps, t, ac, "eps") is eps


def test_conversions_keep_dtype_and_check_batch():
    ac = make_alphas_cumprod()
    x = torch.randn(2, 3, dtype=torch.float16)
    assert q_sample(x, torch.tensor([1, 2]), x, ac).dtype == torch.float16
    with pytest.raises(ValueError, match="batch size"):
        q_sample(x, torch.tensor([1, 2, 3]), x, ac)


def test_timestep_spacings():
    assert ddim_timesteps(25).tolist() == list(range(961, 0, -40))
    assert ddim_timesteps(50).tolist() == list(range(981, 0, -20))
    assert ddim_timesteps(25, spacing="trailing").tolist() == list(range(999, 0, -40))
    assert ddim_timesteps(25, spacing="leading", steps_offset=0).tolist() == list(range(960, -1, -40))
    lin = ddim_timesteps(4, 1000, "linspace")
    assert lin.tolist() == [999, 666, 333, 0]
    # DynamiCrafter's "uniform" quirk: 30 does not divide 1000 and yields 31 steps
    assert len(ddim_timesteps(30)) == 31
    with pytest.raises(ValueError, match="spacing"):
        ddim_timesteps(25, spacing="quad")
    # range(0, 1000, 333) + 1 reaches t = 1000, past the schedule (DynamiCrafter would index out of range)
    with pytest.raises(ValueError, match="num_steps=3"):
        ddim_timesteps(3)


def _oracle(x0, ac, parameterization):
    def predict(z, t):
        eps = eps_from_x0(z, x0, t, ac)
        return eps if parameterization == "eps" else v_from_x0_eps(x0, eps, t, ac)
    return predict


@pytest.mark.parametrize("parameterization,zero_snr,spacing", [
    ("eps", False, "uniform"), ("v", False, "uniform"), ("v", True, "trailing"),
])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_with_oracle_recovers_x0(parameterization, zero_snr, spacing, eta):
    ac = make_alphas_cumprod(zero_terminal_snr=zero_snr)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 4, 3, 4, 4, generator=g, dtype=torch.float64)
    z_T = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    schedule = DDIMSchedule.create(ac, 25, spacing=spacing, set_alpha_to_one=True)
    out = ddim_sample(_oracle(x0, ac, parameterization), z_T, schedule, parameterization=parameterization,
                      eta=eta, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(out, x0, rtol=1e-9, atol=1e-9)


def test_ddim_final_alpha_of_dynamicrafter():
    # without set_alpha_to_one the last step lands on alphas_cumprod[0], as in DynamiCrafter
    ac = make_alphas_cumprod()
    x0 = torch.randn(1, 4, 2, 3, 3, dtype=torch.float64)
    eps = torch.randn(x0.shape, dtype=torch.float64)
    schedule = DDIMSchedule.create(ac, 25)
    i = len(schedule) - 1
    t = schedule.timesteps[i]
    z = q_sample(x0, t, eps, ac)
    z_prev, x0_pred = ddim_step(z, eps, schedule, i, parameterization="eps")
    torch.testing.assert_close(x0_pred, x0)
    torch.testing.assert_close(z_prev, ac[0].sqrt() * x0 + (1 - ac[0]).sqrt() * eps)


def test_eps_parameterization_rejects_zero_snr_start():
    ac = make_alphas_cumprod(zero_terminal_snr=True)
    schedule = DDIMSchedule.create(ac, 10, spacing="trailing")
    z = torch.randn(1, 2)
    with pytest.raises(ValueError, match="zero terminal SNR"):
        ddim_step(z, z, schedule, 0, parameterization="eps")


@pytest.mark.parametrize("parameterization,zero_snr,spacing,set_one", [
    ("eps", False, "uniform", False), ("eps", False, "leading", True),
    ("v", False, "trailing", False), ("v", True, "trailing", False),
])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_matches_diffusers(parameterization, zero_snr, spacing, set_one, eta):
    cfg = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "zero_terminal_snr": zero_snr}
    scheduler = diffusers_ddim_scheduler(cfg, num_steps=25, spacing=spacing, set_alpha_to_one=set_one,
                                         parameterization=parameterization, steps_offset=0)
    ac = make_alphas_cumprod(**cfg)
    torch.testing.assert_close(scheduler.alphas_cumprod.double(), ac, rtol=1e-6, atol=1e-7)
    ours = DDIMSchedule.create(ac, 25, spacing=spacing, steps_offset=0, set_alpha_to_one=set_one)
    assert scheduler.timesteps.tolist() == ours.timesteps.tolist()
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 4, 2, 3, 3, generator=g)
    for i, t in enumerate(ours.timesteps.tolist()):
        out = torch.randn(z.shape, generator=g)
        noise = torch.randn(z.shape, generator=g)
        expected = scheduler.step(out, t, z, eta=eta, variance_noise=noise if eta > 0 else None).prev_sample
        z_ours, _ = ddim_step(z, out, ours, i, parameterization=parameterization, eta=eta, noise=noise)
        torch.testing.assert_close(z_ours, expected, rtol=1e-4, atol=1e-4)
        z = expected


def test_dynamic_rescale_in_ddim_step():
    ac = make_alphas_cumprod()
    scales = dynamic_rescale_scales()
    schedule = DDIMSchedule.create(ac, 25, scale_arr=scales)
    plain = DDIMSchedule.create(ac, 25)
    z, out = torch.randn(1, 3, dtype=torch.float64), torch.randn(1, 3, dtype=torch.float64)
    i = 5
    z_prev, x0 = ddim_step(z, out, schedule, i, parameterization="eps")
    _, x0_plain = ddim_step(z, out, plain, i, parameterization="eps")
    t, t_prev = schedule.timesteps[i], schedule.timesteps[i + 1]
    torch.testing.assert_close(x0, x0_plain * scales[t_prev] / scales[t])
    ap = schedule.alphas_prev[i]
    torch.testing.assert_close(z_prev, ap.sqrt() * x0 + (1 - ap).sqrt() * out)
