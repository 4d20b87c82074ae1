"""Training loss, guidance, sampling and CVD collaborative sampling against a tiny fake method that
implements the VideoDiffusionModel protocol."""

import pytest
import torch
from torch import nn

from camvid.diffusion.collaborative import (
    collaborative_output,
    gather_views,
    pair_index,
    sample_collaborative,
    sample_collaborative_video,
    select_pairs,
)
from camvid.diffusion.guidance import Guidance, guided_output, rescale_guidance
from camvid.diffusion.losses import CondDropout, diffusion_loss
from camvid.diffusion.sampler import sample_latents, sample_video
from camvid.diffusion.schedule import make_alphas_cumprod
from camvid.models.base import CameraInputs, Conditions, VideoDiffusionModel

C, T, H, W, D = 3, 4, 4, 4, 5


class FakeMethod(VideoDiffusionModel):
    """Latents are the pixels (channels first). The output mixes the noisy latent through a learnable
    1x1x1 conv with per-condition terms, one of them an interaction (camera x text), so every drop
    flag changes the output in its own way. Optionally the views of a pair see each other."""

    def __init__(self, parameterization="eps", cross_view=False):
        super().__init__()
        self.parameterization = parameterization
        self.num_train_timesteps = 1000
        self.supports = {"text", "image", "camera"}
        self.register_buffer("alphas_cumprod", make_alphas_cumprod().float())
        self.mix = nn.Conv3d(C, C, 1)
        self.text_gain = nn.Parameter(torch.tensor(0.3))
        self.cross_view = cross_view
        self.calls = []

    def encode_video(self, video):
        return video.permute(0, 2, 1, 3, 4).contiguous()

    def decode_latents(self, z):
        return z.permute(0, 2, 1, 3, 4).contiguous()

    def conditions(self, batch, latents=None):
        B = len(batch["caption"])
        text = torch.stack([torch.full((2, D), float(len(c))) for c in batch["caption"]]) / 10
        image = latents[:, :, 0] if latents is not None else None
        camera = CameraInputs(K=batch["K"], c2w=batch["c2w"], image_hw=(H, W),
                              num_views=int(batch.get("num_views", 1)))
        return Conditions(text=text, image=image, camera=camera, frame_stride=torch.ones(B, dtype=torch.long))

    def denoise(self, z_t, t, cond):
        self.calls.append({"batch": z_t.shape[0], "num_views": cond.camera.num_views, "z": z_t.clone()})
        B = z_t.shape[0]

        def keep(flag):
            k = torch.ones(B) if flag is None else (~flag).float()
            return k.to(z_t).view(B, 1, 1, 1, 1)

        txt, img, cam = keep(cond.drop_text), keep(cond.drop_image), keep(cond.drop_camera)
        text_feat = cond.text.mean((1, 2)).view(B, 1, 1, 1, 1)
        cam_feat = cond.camera.c2w[:, :, :3, 3].sum((1, 2)).view(B, 1, 1, 1, 1)
        out = self.mix(z_t) * (1 + t.view(B, 1, 1, 1, 1) / 1000)
        out = out + self.text_gain * txt * text_feat + cam * cam_feat * (1 + txt)
        if cond.image is not None:
            out = out + 0.5 * img * cond.image.unsqueeze(2)
        if self.cross_view:
            # each view is pulled toward its partner ([a0, b0, a1, b1, ...] layout)
            partner = z_t.view(B // 2, 2, *z_t.shape[1:]).flip(1).reshape(z_t.shape)
            out = out + 0.25 * partner
        return out

    def freeze_base(self):
        pass


def make_batch(B=2, seed=0, num_views=1):
    g = torch.Generator().manual_seed(seed)
    c2w = torch.eye(4).repeat(B, T, 1, 1)
    c2w[:, :, :3, 3] = torch.randn(B, T, 3, generator=g) * 0.1
    K = torch.tensor([[4.0, 0, 2], [0, 4.0, 2], [0, 0, 1]]).repeat(B, T, 1, 1)
    return {
        "video": torch.rand(B, T, 3, H, W, generator=g) * 2 - 1,
        "K": K, "c2w": c2w,
        "cond_index": torch.zeros(B, dtype=torch.long),
        "frame_stride": torch.ones(B, dtype=torch.long),
        "caption": [f"scene number {i}" + "!" * i for i in range(B)],
        "key": [str(i) for i in range(B)],
        "num_views": num_views,
    }


def make_model(parameterization="eps", cross_view=False, seed=0):
    torch.manual_seed(seed)
    return FakeMethod(parameterization, cross_view)


# ---------------------------------------------------------------- condition dropout and the loss


def test_dynamicrafter_dropout_bands():
    drop = CondDropout.dynamicrafter(0.05)
    flags = drop.sample(200_000, torch.Generator().manual_seed(0))
    t, i = flags["text"], flags["image"]
    assert (t & ~i).float().mean().item() == pytest.approx(0.05, abs=0.003)
    assert (t & i).float().mean().item() == pytest.approx(0.05, abs=0.003)
    assert (~t & i).float().mean().item() == pytest.approx(0.05, abs=0.003)
    assert not flags["camera"].any()


def test_independent_dropout_and_validation():
    drop = CondDropout(p_text=0.3, p_image=0.2, p_camera=0.1)
    flags = drop.sample(200_000, torch.Generator().manual_seed(1))
    assert (flags["text"] & flags["image"]).float().mean().item() == pytest.approx(0.06, abs=0.004)
    assert flags["camera"].float().mean().item() == pytest.approx(0.1, abs=0.004)
    with pytest.raises(ValueError, match="p_text_and_image"):
        CondDropout(p_text=0.1, p_image=0.1, p_text_and_image=0.2)
    with pytest.raises(ValueError, match="p_camera"):
        CondDropout(p_camera=1.5)
    with pytest.raises(ValueError, match="unknown cond_dropout"):
        CondDropout.from_config({"p_txt": 0.1})
    assert CondDropout.from_config({"uncond_prob": 0.05}) == CondDropout.dynamicrafter(0.05)


@pytest.mark.parametrize("parameterization", ["eps", "v"])
def test_loss_is_deterministic_for_a_generator(parameterization):
    model, batch = make_model(parameterization), make_batch(B=4)
    drop = {"p_text": 0.5, "p_image": 0.5, "p_camera": 0.5}
    a = diffusion_loss(model, batch, generator=torch.Generator().manual_seed(7), cond_dropout=drop)
    b = diffusion_loss(model, batch, generator=torch.Generator().manual_seed(7), cond_dropout=drop)
    c = diffusion_loss(model, batch, generator=torch.Generator().manual_seed(8), cond_dropout=drop)
    assert a["loss"].item() == b["loss"].item()
    assert torch.equal(a["timesteps"], b["timesteps"]) and torch.equal(a["drop_text"], b["drop_text"])
    assert not torch.equal(a["timesteps"], c["timesteps"])
    assert a["loss"].requires_grad and a["loss_per_sample"].shape == (4,)
    torch.testing.assert_close(a["loss"], a["loss_per_sample"].mean())


def test_loss_timestep_range_bounds_the_drawn_timesteps():
    model, batch = make_model(), make_batch(B=64)
    t = diffusion_loss(model, batch, generator=torch.Generator().manual_seed(0), timestep_range=(600, 610))["timesteps"]
    assert int(t.min()) >= 600 and int(t.max()) <= 610 and len(set(t.tolist())) > 1
    one = diffusion_loss(model, batch, generator=torch.Generator().manual_seed(0), timestep_range=(5, 5))["timesteps"]
    assert set(one.tolist()) == {5}
    T_train = len(model.alphas_cumprod)
    for bad in ((10, 5), (-1, 5), (0, T_train)):
        with pytest.raises(ValueError, match="train_timesteps"):
            diffusion_loss(model, batch, timestep_range=bad)


def test_loss_drop_flags_reach_the_model():
    model, batch = make_model(), make_batch(B=3)
    seen = {}
    original = model.denoise

    def spy(z, t, cond):
        seen["cond"] = cond
        return original(z, t, cond)

    model.denoise = spy
    out = diffusion_loss(model, batch, generator=torch.Generator().manual_seed(0),
                         cond_dropout={"p_text": 1.0, "p_camera": 0.0})
    assert seen["cond"].drop_text.all() and not seen["cond"].drop_camera.any()
    assert out["drop_text"].all()


def test_loss_ties_drops_within_view_groups():
    model, batch = make_model(), make_batch(B=8, num_views=2)
    out = diffusion_loss(model, batch, generator=torch.Generator().manual_seed(3),
                         cond_dropout={"p_text": 0.5, "p_camera": 0.5})
    for name in ("drop_text", "drop_camera"):
        pairs = out[name].view(4, 2)
        assert torch.equal(pairs[:, 0], pairs[:, 1])


def test_loss_rejects_dropout_of_unsupported_condition():
    model = make_model()
    model.supports = {"text", "camera"}
    with pytest.raises(ValueError, match="p_image"):
        diffusion_loss(model, make_batch(), cond_dropout={"p_image": 0.1})


def test_loss_target_is_the_noise_for_eps():
    # a model that ignores everything and outputs 0 has loss E[eps^2] ~ 1 (eps) whatever t is
    model = make_model()
    model.denoise = lambda z, t, cond: torch.zeros_like(z)
    batch = make_batch(B=4)
    batch["video"] = torch.zeros(4, T, 3, 16, 16)
    out = diffusion_loss(model, batch, generator=torch.Generator().manual_seed(0))
    assert out["loss"].item() == pytest.approx(1.0, abs=0.1)


def test_loss_decreases_when_training_the_fake_method():
    model, batch = make_model(), make_batch(B=4)
    drop = CondDropout.dynamicrafter(0.05)

    def eval_loss():
        with torch.no_grad():
            return sum(diffusion_loss(model, batch, generator=torch.Generator().manual_seed(100 + k),
                                      cond_dropout=drop)["loss"].item() for k in range(4))

    before = eval_loss()
    opt = torch.optim.Adam(model.trainable_parameters(), lr=3e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        loss = diffusion_loss(model, batch, generator=g, cond_dropout=drop)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.8 * before


# ---------------------------------------------------------------- guidance


def _single(model, z, t, cond, text=False, image=False, camera=False):
    B = z.shape[0]
    flags = {k: torch.full((B,), v) for k, v in (("text", text), ("image", image), ("camera", camera))}
    return model.denoise(z, t, cond.with_drops(**flags))


def _setup(B=2, seed=0):
    model, batch = make_model(seed=seed), make_batch(B, seed)
    latents = model.encode_video(batch["video"])
    cond = model.conditions(batch, latents)
    z = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed + 1))
    t = torch.tensor([500, 20])[:B]
    return model, cond, z, t


@torch.no_grad()
def test_cami2v_guidance_equals_written_formula_in_one_call():
    model, cond, z, t = _setup()
    s_it, s_cam = 7.5, 1.5
    model.calls.clear()
    got = guided_output(model, z, t, cond, Guidance(scale=s_it, camera_scale=s_cam))
    assert len(model.calls) == 1 and model.calls[0]["batch"] == 3 * z.shape[0]
    e_full = _single(model, z, t, cond)
    e_cam_only = _single(model, z, t, cond, text=True, image=True)
    e_no_cam = _single(model, z, t, cond, camera=True)
    expected = e_cam_only + s_it * (e_full - e_cam_only) + s_cam * (e_full - e_no_cam)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # the three branches really differ, so the check above is not vacuous
    assert (e_full - e_cam_only).abs().max() > 0.1 and (e_full - e_no_cam).abs().max() > 0.1


@torch.no_grad()
def test_text_cfg_and_scale_one():
    model, cond, z, t = _setup()
    model.calls.clear()
    got = guided_output(model, z, t, cond, {"scale": 4.0, "uncond_drops": ["text"]})
    assert len(model.calls) == 1 and model.calls[0]["batch"] == 2 * z.shape[0]
    e_c, e_u = _single(model, z, t, cond), _single(model, z, t, cond, text=True)
    torch.testing.assert_close(got, e_u + 4.0 * (e_c - e_u), rtol=1e-5, atol=1e-5)

    model.calls.clear()
    plain = guided_output(model, z, t, cond, Guidance(scale=1.0))
    assert len(model.calls) == 1 and model.calls[0]["batch"] == z.shape[0]
    torch.testing.assert_close(plain, e_c)


@torch.no_grad()
def test_guidance_rescale_and_cosine_camera_schedule():
    model, cond, z, t = _setup()
    g = Guidance(scale=5.0, camera_scale=2.0, rescale=0.7, camera_scale_schedule="cosine")
    got = guided_output(model, z, t, cond, g)
    e_full = _single(model, z, t, cond)
    e_u = _single(model, z, t, cond, text=True, image=True)
    e_nc = _single(model, z, t, cond, camera=True)
    w = torch.cos((1 - t.double() / 999) * torch.pi / 2).float().view(-1, 1, 1, 1, 1)
    raw = e_u + 5.0 * (e_full - e_u) + 2.0 * w * (e_full - e_nc)
    dims = (1, 2, 3, 4)
    rescaled = raw * e_full.std(dim=dims, keepdim=True) / raw.std(dim=dims, keepdim=True)
    torch.testing.assert_close(got, 0.7 * rescaled + 0.3 * raw, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rescale_guidance(raw, e_full, 0.0), raw)


def test_guidance_config_errors():
    with pytest.raises(ValueError, match="uncond_drops"):
        Guidance(uncond_drops=("audio",))
    with pytest.raises(ValueError, match="camera_scale"):
        Guidance(camera_scale=1.0, uncond_drops=("text", "camera"))
    with pytest.raises(ValueError, match="unknown guidance option"):
        Guidance.from_config({"cfg": 7.5})


# ---------------------------------------------------------------- sampling


@pytest.mark.parametrize("parameterization", ["eps", "v"])
def test_sample_video_is_deterministic_for_a_seed(parameterization):
    model, batch = make_model(parameterization), make_batch(B=2)
    guidance = {"scale": 3.0, "camera_scale": 1.0}
    kw = {"num_steps": 5, "guidance": guidance, "eta": 1.0}
    a = sample_video(model, batch, generator=torch.Generator().manual_seed(0), **kw)
    b = sample_video(model, batch, generator=torch.Generator().manual_seed(0), **kw)
    c = sample_video(model, batch, generator=torch.Generator().manual_seed(1), **kw)
    assert a.shape == batch["video"].shape
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1


def test_sample_latents_one_model_call_per_step():
    model, batch = make_model(), make_batch(B=2)
    cond = model.conditions(batch, model.encode_video(batch["video"]))
    model.calls.clear()
    z = sample_latents(model, cond, latent_shape=(2, C, T, H, W), num_steps=4, spacing="leading",
                       guidance=Guidance(scale=2.0, camera_scale=1.0), generator=torch.Generator().manual_seed(0))
    assert z.shape == (2, C, T, H, W)
    assert [c["batch"] for c in model.calls] == [6] * 4


def test_sample_video_input_errors():
    model = make_model()
    cond = model.conditions(make_batch(), None)
    with pytest.raises(ValueError, match="latent_shape"):
        sample_video(model, cond, num_steps=2)
    batch = make_batch()
    del batch["video"]
    with pytest.raises(ValueError, match="image-to-video"):
        sample_video(model, batch, num_steps=2)


# ---------------------------------------------------------------- CVD collaborative sampling


def test_select_pairs():
    assert select_pairs(3, "exhaustive") == [(0, 1), (0, 2), (1, 2)]
    g = torch.Generator().manual_seed(0)
    pairs = select_pairs(6, "partition", num_partitions=2, generator=g)
    assert len(pairs) == 6
    for q in range(2):
        assert sorted(v for p in pairs[3 * q:3 * q + 3] for v in p) == list(range(6))
    again = select_pairs(6, "partition", num_partitions=2, generator=torch.Generator().manual_seed(0))
    assert pairs == again
    with pytest.raises(ValueError, match="even"):
        select_pairs(3, "partition")
    with pytest.raises(ValueError, match="strategy"):
        select_pairs(4, "all")


def _collab_setup(M=3, groups=1):
    model = make_model(cross_view=True)
    batch = make_batch(B=M * groups, seed=2)
    del batch["video"]
    cond = model.conditions(batch, None)
    z = torch.randn(M * groups, C, T, H, W, generator=torch.Generator().manual_seed(5))
    t = torch.full((M * groups,), 300)
    return model, cond, z, t


@torch.no_grad()
def test_collaborative_average_m3_equals_hand_computed_pairs():
    M = 3
    model, cond, z, t = _collab_setup(M)
    pairs = select_pairs(M, "exhaustive")
    guidance = Guidance(scale=3.0, uncond_drops=("text",))
    model.calls.clear()
    got = collaborative_output(model, z, t, cond, pairs, M, guidance)
    assert len(model.calls) == 1
    call = model.calls[0]
    assert call["batch"] == 2 * 2 * len(pairs) and call["num_views"] == 2
    # interleaved layout: [a0, b0, a1, b1, ...] = videos 0,1, 0,2, 1,2
    expected_z = torch.stack([z[0], z[1], z[0], z[2], z[1], z[2]])
    torch.testing.assert_close(call["z"][:6], expected_z)

    per_video = [[] for _ in range(M)]
    for i, j in pairs:
        idx = torch.tensor([i, j])
        pair_cond = gather_views(cond, idx, 2)
        e_c = model.denoise(z[idx], t[idx], pair_cond)
        e_u = model.denoise(z[idx], t[idx], pair_cond.with_drops(text=torch.ones(2, dtype=torch.bool)))
        out = e_u + 3.0 * (e_c - e_u)
        per_video[i].append(out[0])
        per_video[j].append(out[1])
    expected = torch.stack([sum(p) / len(p) for p in per_video])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # the partner matters, so the average differs from any single pair's prediction
    assert (per_video[0][0] - per_video[0][1]).abs().max() > 0.01


@torch.no_grad()
def test_collaborative_groups_and_gathered_cameras():
    M, G = 2, 2
    model, cond, z, t = _collab_setup(M, G)
    index = pair_index([(1, 0)], M, G)
    assert index.tolist() == [1, 0, 3, 2]
    gathered = gather_views(cond, index, 2)
    torch.testing.assert_close(gathered.camera.c2w, cond.camera.c2w[index])
    torch.testing.assert_close(gathered.text, cond.text[index])
    assert gathered.camera.num_views == 2
    out = collaborative_output(model, z, t, cond, [(0, 1)], M)
    direct = model.denoise(z, t, gather_views(cond, torch.arange(4), 2))
    torch.testing.assert_close(out, direct)


def test_sample_collaborative_deterministic_and_recurrent_calls():
    M = 4
    model, cond, _, _ = _collab_setup(M)
    kw = {"num_videos": M, "latent_shape": (M, C, T, H, W), "num_steps": 4, "strategy": "partition",
          "num_partitions": 2, "recurrent_steps": 2, "guidance": {"scale": 2.0, "uncond_drops": ["text"]}}
    model.calls.clear()
    a = sample_collaborative(model, cond, generator=torch.Generator().manual_seed(0), **kw)
    # R=2 recurrences on all but the last of 4 steps: 7 calls of 2 partitions x 2 pairs x 2 views x 2 branches
    assert [c["batch"] for c in model.calls] == [16] * 7
    b = sample_collaborative(model, cond, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(a, b) and a.shape == (M, C, T, H, W)
    video = sample_collaborative_video(model, cond, generator=torch.Generator().manual_seed(0), **kw)
    assert video.shape == (M, T, 3, H, W) and video.abs().max() <= 1


def test_text_to_video_sampling_needs_only_a_latent_shape():
    model = make_model()
    model.image_to_video = False
    batch = make_batch(B=2)
    del batch["video"]
    model.calls.clear()
    video = sample_video(model, batch, num_steps=2, latent_shape=(2, C, T, H, W),
                         guidance={"scale": 5.0, "uncond_drops": ["text"]},
                         generator=torch.Generator().manual_seed(0))
    assert video.shape == (2, T, 3, H, W)
    assert [c["batch"] for c in model.calls] == [4, 4]
