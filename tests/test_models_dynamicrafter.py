"""DynamiCrafter family: official layouts on the meta device, encoders, schedules, tiny runs."""

from __future__ import annotations

import pytest
import torch

from camvid.models.dynamicrafter.builder import build_dynamicrafter_method
from camvid.models.dynamicrafter.image_proj import ImageProjModel, Resampler
from camvid.models.dynamicrafter.unet import DynamiCrafterUNet, dynamicrafter_unet_config
from camvid.models.encoders import (
    AutoencoderKLFirstStage,
    HashTextEncoder,
    PixelShuffleFirstStage,
    TinyImageEncoder,
)
from camvid.models.manifests import load_manifest


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _manifest_shapes(name: str, prefix: str) -> dict[str, tuple[int, ...]]:
    return {k: e.shape for k, e in load_manifest(name, prefix).items()}


@pytest.mark.parametrize("size,manifest,params", [
    ("256", "dynamicrafter_256x256", 1_438_854_996),
    ("512", "dynamicrafter_512x320", 1_438_854_980),
])
def test_unet_matches_official_layout(size, manifest, params):
    with torch.device("meta"):
        unet = DynamiCrafterUNet(**dynamicrafter_unet_config(size))
    ours, ref = _shapes(unet), _manifest_shapes(manifest, "model.diffusion_model.")
    assert sorted(set(ours) ^ set(ref)) == []
    assert {k for k in ours if ours[k] != ref[k]} == set()
    assert sum(p.numel() for p in unet.parameters()) == params
    assert any(k.endswith("attn2.alpha") for k in ours) == (size == "256")


def test_resampler_matches_official_layout():
    with torch.device("meta"):
        proj = Resampler()
    assert _shapes(proj) == _manifest_shapes("dynamicrafter_256x256", "image_proj_model.")
    assert sum(p.numel() for p in proj.parameters()) == 48_787_456


def test_image_proj_model_shapes():
    proj = ImageProjModel(cross_attention_dim=32, clip_embeddings_dim=16, clip_extra_context_tokens=4)
    assert proj(torch.randn(3, 16)).shape == (3, 4, 32)


def test_resampler_per_frame_tokens():
    proj = Resampler(dim=32, depth=1, dim_head=8, heads=4, num_queries=2, embedding_dim=16, output_dim=24,
                     video_length=5)
    assert proj(torch.randn(2, 7, 16)).shape == (2, 5, 2, 24)


def test_unet_rejects_bad_inputs():
    unet = DynamiCrafterUNet(**dynamicrafter_unet_config("tiny"))
    text = torch.randn(1, 4, 64)
    with pytest.raises(ValueError, match="in_channels"):
        unet(torch.randn(1, 4, 2, 8, 8), torch.tensor([1]), text)
    with pytest.raises(ValueError, match="divisible"):
        unet(torch.randn(1, 8, 2, 7, 8), torch.tensor([1]), text)
    with pytest.raises(ValueError, match="num_head_channels"):
        DynamiCrafterUNet(model_channels=32, num_head_channels=24)


def test_unet_per_frame_and_shared_image_tokens_agree_when_equal():
    torch.manual_seed(0)
    unet = DynamiCrafterUNet(**dynamicrafter_unet_config("tiny"), temporal_length=3).eval()
    x, t, text = torch.randn(1, 8, 3, 8, 8), torch.tensor([7]), torch.randn(1, 4, 64)
    shared = torch.randn(1, 5, 64)
    a = unet(x, t, text, shared)
    b = unet(x, t, text, shared[:, None].expand(-1, 3, -1, -1))
    torch.testing.assert_close(a, b)


def test_unet_frames_interact_only_through_temporal_layers():
    """Changing one frame's input changes the other frames' outputs (temporal conv/attention work),
    and the batch samples stay independent."""
    torch.manual_seed(0)
    unet = DynamiCrafterUNet(**dynamicrafter_unet_config("tiny"), temporal_length=4).eval()
    for p in unet.parameters():  # zero-initialised output layers would hide every interaction
        torch.nn.init.normal_(p, std=0.05)
    x, t, text = torch.randn(2, 8, 4, 8, 8), torch.tensor([3, 3]), torch.randn(2, 4, 64)
    y = unet(x, t, text)
    x2 = x.clone()
    x2[0, :, 0] += 1.0
    y2 = unet(x2, t, text)
    assert (y2[0, :, 3] - y[0, :, 3]).abs().max() > 1e-4
    torch.testing.assert_close(y2[1], y[1])


def test_pixel_shuffle_first_stage_is_lossless():
    stage = PixelShuffleFirstStage(4)
    video = torch.rand(2, 3, 3, 16, 24) * 2 - 1
    z = stage.encode(video)
    assert z.shape == (2, 48, 3, 4, 6)
    assert torch.equal(stage.decode(z), video)
    with pytest.raises(ValueError, match="not divisible"):
        stage.encode(torch.zeros(1, 2, 3, 10, 16))


def test_autoencoder_first_stage_missing_files_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json.*huggingface"):
        AutoencoderKLFirstStage(tmp_path)


def test_autoencoder_first_stage_roundtrip_shapes_and_frozen():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4)
    stage = AutoencoderKLFirstStage(vae=vae, sample_posterior=False)
    video = torch.rand(1, 2, 3, 16, 16) * 2 - 1
    z = stage.encode(video)
    assert z.shape == (1, 4, 2, 8, 8) and stage.downsample == 2
    assert stage.decode(z).shape == video.shape
    assert not any(p.requires_grad for p in stage.parameters())
    stage.train()
    assert not stage.vae.training


def test_hash_text_encoder_is_deterministic_and_distinguishes_captions():
    enc_a, enc_b = HashTextEncoder(dim=16), HashTextEncoder(dim=16)
    caps = ["a red car drives", "a blue car drives", ""]
    ta, tb = enc_a(caps), enc_b(caps)
    assert ta.shape == (3, 16, 16)
    assert torch.equal(ta, tb)
    assert not torch.allclose(ta[0], ta[1])
    assert enc_a.token_ids([""])[0, 1:].eq(0).all()
    with pytest.raises(ValueError, match="list"):
        enc_a("not a list")


def test_tiny_image_encoder_tokens():
    enc = TinyImageEncoder(dim=24, image_size=32)
    out = enc(torch.rand(2, 3, 40, 56) * 2 - 1)
    assert out.shape == (2, enc.num_tokens, 24) and enc.num_tokens == 17
    assert not any(p.requires_grad for p in enc.parameters())


def test_method_schedules():
    tiny = build_dynamicrafter_method("dynamicrafter", "tiny", num_frames=2)
    ac = tiny.alphas_cumprod
    betas = 1 - ac / torch.cat([torch.ones(1, dtype=ac.dtype), ac[:-1]])
    torch.testing.assert_close(betas[0].item(), 0.00085, rtol=1e-6, atol=0)
    torch.testing.assert_close(betas[-1].item(), 0.012, rtol=1e-6, atol=0)
    assert tiny.parameterization == "eps" and not hasattr(tiny, "scale_arr")
    v = build_dynamicrafter_method("dynamicrafter", "tiny", num_frames=2, parameterization="v", zero_terminal_snr=True,
                                   dynamic_rescale=True)
    assert v.alphas_cumprod[-1] == 0 and torch.isclose(v.alphas_cumprod[0], ac[0])
    assert v.scale_arr.shape == (1000,) and v.scale_arr[0] == 1 and torch.isclose(v.scale_arr[-1], torch.tensor(0.7,
                                                                                             dtype=torch.float64))


def _batch(b=2, t=4, h=16, w=16):
    torch.manual_seed(1)
    K = torch.tensor([[float(w), 0, w / 2], [0, float(w), h / 2], [0, 0, 1]]).expand(b, t, 3, 3).clone()
    c2w = torch.eye(4).expand(b, t, 4, 4).clone()
    c2w[:, :, 0, 3] = torch.linspace(0, 0.5, t)
    return dict(video=torch.rand(b, t, 3, h, w) * 2 - 1, K=K, c2w=c2w, cond_index=torch.tensor([0, 2])[:b],
                frame_stride=torch.tensor([2, 5])[:b], caption=["a room", "a hall"][:b], num_views=1)


def test_dynamicrafter_method_tiny_train_step_and_drops():
    torch.manual_seed(0)
    model = build_dynamicrafter_method("dynamicrafter", "tiny", num_frames=4)
    with torch.no_grad():  # stand-in for pretrained weights: fresh zero-initialised outputs hide everything
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = _batch()
    z = model.encode_video(batch["video"])
    assert z.shape == (2, 48, 4, 4, 4)
    cond = model.conditions(batch, z)
    out = model.denoise(torch.randn_like(z), torch.tensor([5, 900]), cond)
    assert out.shape == z.shape
    out.square().mean().backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("model.diffusion_model.", "image_proj_model.")) for n in trainable)
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)

    # a dropped text equals the empty caption; a dropped image equals an all-zero frame
    model.eval()
    noise, t = torch.randn_like(z), torch.tensor([300, 300])
    dropped = model.denoise(noise, t, cond.with_drops(text=torch.tensor([True, False]),
                                                      image=torch.tensor([False, True])))
    full = model.denoise(noise, t, cond)
    assert (dropped[0] - full[0]).abs().max() > 1e-5 and (dropped[1] - full[1]).abs().max() > 1e-5
    manual = dict(batch, caption=["", "a hall"])
    manual_cond = model.conditions(manual, z)
    frame1 = batch["video"][1, 2]
    manual_cond.image[1] = model.embedder(torch.zeros_like(frame1)[None])[0]
    torch.testing.assert_close(dropped, model.denoise(noise, t, manual_cond))
    # batched classifier-free guidance: a repeated batch gives the same rows
    both = model.denoise(torch.cat([noise, noise]), torch.cat([t, t]), cond.repeat(2))
    torch.testing.assert_close(both[:2], model.denoise(noise, t, cond))


def test_builder_rejects_bad_options():
    with pytest.raises(ValueError, match="unknown method"):
        build_dynamicrafter_method("svd")
    with pytest.raises(ValueError, match="size"):
        build_dynamicrafter_method("dynamicrafter", "1024")
    with pytest.raises(ValueError, match="Invalid combination: attn=full3d"):
        build_dynamicrafter_method("cameractrl", "tiny", attn="full3d")
    # a missing base file fails before the 2.6 B-parameter model is built, naming where to get it
    with pytest.raises(FileNotFoundError, match="huggingface.co/Doubiiu/DynamiCrafter "):
        build_dynamicrafter_method("dynamicrafter", "256", pretrained="/nonexistent/model.ckpt")
    with pytest.raises(FileNotFoundError, match="MuteApo/CamI2V"):
        build_dynamicrafter_method("cami2v", "tiny", method_ckpt="/nonexistent/256_cami2v.pt")


def test_512_method_is_v_param_zero_snr_fps():
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(block_out_channels=(32,) * 4, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4)
        model = build_dynamicrafter_method("dynamicrafter", "512", first_stage=AutoencoderKLFirstStage(vae=vae),
                                           text_encoder=HashTextEncoder(dim=1024),
                                           image_encoder=TinyImageEncoder(dim=1280))
    assert all(p.is_meta for p in model.parameters())
    assert model.parameterization == "v" and model.use_dynamic_rescale
    assert model.fs_condition_type == "fps" and model.unet.default_fs == 24
    assert "alphas_cumprod" not in model.state_dict()


def test_load_pretrained_official_layout(tmp_path):
    torch.manual_seed(0)
    src = build_dynamicrafter_method("dynamicrafter", "tiny", num_frames=4)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = {k.replace("fps_embedding", "framestride_embed"): v for k, v in src.state_dict().items()}
    state["betas"] = torch.zeros(1000)
    state["first_stage_model.encoder.conv_in.weight"] = torch.zeros(3)  # an lvdm VAE our tiny stage lacks
    torch.save({"state_dict": state}, tmp_path / "model.ckpt")

    torch.manual_seed(1)
    dst = build_dynamicrafter_method("cameractrl", "tiny", num_frames=4)
    report = dst.load_pretrained(tmp_path / "model.ckpt")
    assert report["skipped:first_stage_model"] == 1 and report["model"] > 0
    for k, v in src.state_dict().items():
        torch.testing.assert_close(dst.state_dict()[k], v)
    assert dst.unet.temporal_blocks  # camera modules kept their zero initialisation
    assert all(b.cc_projection.weight.eq(0).all() for _, b in dst.unet.temporal_blocks(include_init_attn=False))

    bad = dict(state)
    bad.pop("model.diffusion_model.out.2.weight")
    torch.save(bad, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="lacks 1"):
        dst.load_pretrained(tmp_path / "partial.pt")
    torch.save({"model.diffusion_model.nope": torch.zeros(1)}, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="do not exist"):
        dst.load_pretrained(tmp_path / "wrong.pt")


def test_cross_attention_matches_written_formula():
    """Text attention plus image attention scaled by tanh(alpha) + 1, against plain einsum maths."""
    from camvid.models.dynamicrafter.blocks import CrossAttention

    torch.manual_seed(0)
    attn = CrossAttention(16, 12, heads=2, dim_head=8, image_cross_attention=True,
                          image_cross_attention_scale_learnable=True)
    with torch.no_grad():
        attn.alpha.fill_(0.3)
    x, text, image = torch.randn(3, 5, 16), torch.randn(3, 4, 12), torch.randn(3, 6, 12)

    def heads_attention(q, k, v):
        q, k, v = (t.view(t.shape[0], t.shape[1], 2, 8).transpose(1, 2) for t in (q, k, v))
        w = torch.softmax(torch.einsum("bhid,bhjd->bhij", q, k) / 8 ** 0.5, dim=-1)
        return torch.einsum("bhij,bhjd->bhid", w, v).transpose(1, 2).reshape(3, 5, 16)

    q = attn.to_q(x)
    expected = heads_attention(q, attn.to_k(text), attn.to_v(text))
    expected = expected + (torch.tanh(torch.tensor(0.3)) + 1) * heads_attention(q, attn.to_k_ip(image),
                                                                                attn.to_v_ip(image))
    torch.testing.assert_close(attn(x, (text, image)), attn.to_out(expected))
    torch.testing.assert_close(attn(x, (text, None)), attn.to_out(heads_attention(q, attn.to_k(text),
                                                                                  attn.to_v(text))))
