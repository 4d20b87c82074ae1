"""The training loop's optimizer and learning-rate schedule (camvid.training.optim)."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from camvid.training.optim import build_optimizer, build_scheduler, fused_supported, lr_factor
from camvid.validation import validate_train_config
from conftest import compose


def _opt_cfg(lr=1e-3):
    return OmegaConf.create({"lr": lr, "betas": [0.9, 0.999], "weight_decay": 0.0})


def test_constant_schedule_with_warmup():
    assert [lr_factor(s, warmup=4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor(10_000) == 1.0


def test_cosine_schedule_from_one_to_min_ratio():
    f = [lr_factor(s, schedule="cosine", max_steps=100, min_ratio=0.1) for s in range(101)]
    assert f[0] == 1.0
    assert f[50] == pytest.approx(0.55)
    assert f[100] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f, f[1:]))  # never rises
    # after a warm-up the decay spans the remaining steps
    g = [lr_factor(s, warmup=10, schedule="cosine", max_steps=110) for s in range(111)]
    assert g[9] == 1.0 and g[10] == 1.0 and g[60] == pytest.approx(0.5) and g[110] == pytest.approx(0.0)
    # past max_steps (a resumed run with a shorter max_steps) it stays at the floor
    assert lr_factor(500, schedule="cosine", max_steps=100, min_ratio=0.2) == pytest.approx(0.2)


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="'linear'.*constant, cosine"):
        lr_factor(0, schedule="linear")
    opt = build_optimizer([torch.nn.Parameter(torch.ones(2))], _opt_cfg())
    with pytest.raises(ValueError, match="linear"):
        build_scheduler(opt, OmegaConf.create({"max_steps": 10, "lr_schedule": "linear"}))


def test_scheduler_sets_the_optimizers_lr():
    p = torch.nn.Parameter(torch.ones(3))
    opt = build_optimizer([p], _opt_cfg(2e-3))
    sched = build_scheduler(opt, OmegaConf.create({"max_steps": 4, "lr_schedule": "cosine", "lr_min_ratio": 0.0}))
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        p.grad = torch.ones(3)
        opt.step()
        sched.step()
    assert lrs == pytest.approx([2e-3 * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(4)])


def test_fused_adamw_matches_the_loop_adamw():
    torch.manual_seed(0)
    w0 = torch.randn(5, 7)
    grads = [torch.randn(5, 7) for _ in range(5)]
    results = []
    for fused in (True, False):
        p = torch.nn.Parameter(w0.clone())
        opt = build_optimizer([p], OmegaConf.create({"lr": 1e-2, "betas": [0.9, 0.99], "weight_decay": 0.01}),
                              fused=fused)
        assert opt.defaults.get("fused") is (True if fused else None)
        for g in grads:
            p.grad = g.clone()
            opt.step()
        results.append(p.detach().clone())
    torch.testing.assert_close(results[0], results[1], rtol=1e-6, atol=1e-7)


def test_fused_only_where_it_runs():
    assert fused_supported([torch.nn.Parameter(torch.ones(2))])
    assert not fused_supported([])
    meta = torch.nn.Parameter(torch.ones(2, device="meta"))
    assert not fused_supported([meta])
    opt = build_optimizer([meta], _opt_cfg())  # falls back to the per-parameter loop, no error
    assert not opt.defaults.get("fused")


@pytest.mark.parametrize("key,value,message", [("lr_schedule", "linear", "one of constant, cosine"),
                                                ("lr_min_ratio", 1.5, "trainer.lr_min_ratio"),
                                                ("fused_optimizer", "yes", "trainer.fused_optimizer")])
def test_bad_schedule_config_is_refused(key, value, message):
    cfg = compose(["experiment=demo", f"trainer.{key}={value}"])
    with pytest.raises(ValueError, match=message):
        validate_train_config(cfg)


def test_new_modules_get_their_own_lr():
    base, new = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    cfg = OmegaConf.create({"lr": 1e-3, "betas": [0.9, 0.999], "weight_decay": 0.0, "new_modules_lr_scale": 5})
    opt = build_optimizer([base, new], cfg, new_params=[new])
    assert [(len(g["params"]), g["lr"]) for g in opt.param_groups] == [(1, 1e-3), (1, pytest.approx(5e-3))]
    sched = build_scheduler(opt, OmegaConf.create({"max_steps": 2, "lr_schedule": "cosine"}))
    for p in (base, new):
        p.grad = torch.ones_like(p)
    opt.step()
    sched.step()  # the schedule scales both groups alike
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5e-3, 2.5e-3])
    # scale 1 (the default): one group; every new parameter must be among the trained ones
    assert len(build_optimizer([base, new], _opt_cfg(), new_params=[new]).param_groups) == 1
    with pytest.raises(ValueError, match="1 of the new modules' parameters are not trainable"):
        build_optimizer([base], cfg, new_params=[new])


def test_new_module_parameters_of_a_method():
    from camvid.models.registry import build_method, new_module_parameter_names, set_trainable

    cfg = compose(["experiment=demo", "backbone.pretrained=null", "model.train_base=true"])
    method = build_method(cfg)
    assert set_trainable(method, cfg)
    before = {n: p.requires_grad for n, p in method.named_parameters()}
    names = new_module_parameter_names(method)
    assert {n: p.requires_grad for n, p in method.named_parameters()} == before  # left as it was
    assert names and all(before[n] for n in names)
    assert any(".epipolar." in n for n in names) and not any(n.endswith("input_blocks.0.0.weight") for n in names)
    assert len(names) < sum(before.values())  # the base trains too here, with the base lr
