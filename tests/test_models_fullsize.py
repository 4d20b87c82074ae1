"""Full-size models from the released files: DynamiCrafter's real encoders (LDM VAE on diffusers,
OpenCLIP ViT-H/14 on transformers), strict loads of every official manifest on the meta device,
base + method checkpoints, wrong-kind files, and a small model of the full-size family loaded from
official-layout files and sampled."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from camvid.models.dynamicrafter import build_dynamicrafter_method
from camvid.models.dynamicrafter.checkpoint import is_camera_key, meta_tensors
from camvid.models.dynamicrafter.image_proj import resampler_config
from camvid.models.dynamicrafter.unet import dynamicrafter_unet_config
from camvid.models.manifests import load_manifest
from camvid.models.openclip import (
    UNUSED_IMAGE_KEYS,
    UNUSED_TEXT_KEYS,
    OpenCLIPImageEncoder,
    OpenCLIPTextEncoder,
    convert_to_official,
)

DYNAMICRAFTER_MANIFESTS = [
    ("dynamicrafter_256x256", "dynamicrafter", "256"),
    ("dynamicrafter_512x320", "dynamicrafter", "512"),
    ("cami2v_256x256", "cami2v", "256"),
    ("cami2v_512x320", "cami2v", "512"),
    ("cami2v-repo_motionctrl_256x256", "motionctrl", "256"),
    ("cami2v-repo_cameractrl_256x256", "cameractrl", "256"),
]


def _meta_file(path, entries: dict, wrap: str | None = "state_dict"):
    state = {k: torch.empty(e.shape, device="meta") for k, e in entries.items()}
    torch.save({wrap: state} if wrap else state, path)
    return path


@pytest.mark.parametrize("manifest,method,size", DYNAMICRAFTER_MANIFESTS)
def test_dynamicrafter_manifests_load_strictly_with_encoders(tmp_path, manifest, method, size):
    entries = load_manifest(manifest)
    path = _meta_file(tmp_path / "model.ckpt", entries)
    model = build_dynamicrafter_method(method, size, device="meta", pretrained=str(path))
    # every tensor of the model came from the file (encoders included) ...
    ours = set(model.state_dict())
    # ... and every key of the file went somewhere: loaded, or an OpenCLIP tensor DynamiCrafter never runs
    unused = {f"cond_stage_model.model.{k}" for k in UNUSED_TEXT_KEYS} | {f"embedder.model.{k}" for k in UNUSED_IMAGE_KEYS}
    report = model.load_weights(path, kind="base")
    assert report["unused:cond_stage_model"] == len(UNUSED_TEXT_KEYS)
    assert report["unused:embedder"] == len(UNUSED_IMAGE_KEYS)
    assert report["first_stage_model"] == 248 and not any(k.startswith("skipped") for k in report)
    # the q/k/v split makes 2 x 3 tensors of each in_proj pair: 294 - 2 unused + 24 * 4 = 388
    assert report["cond_stage_model"] == 388 and report["embedder"] == 392 + 32 * 4
    official_unet = {k for k in entries if k.startswith(("model.", "image_proj_model.", "pose_encoder."))}
    assert official_unet == {k for k in ours if k.startswith(("model.", "image_proj_model.", "pose_encoder."))}
    assert unused <= set(entries)


def test_animatediff_manifests_load_strictly_on_meta(tmp_path):
    from camvid.models.animatediff import build_animatediff_method
    from camvid.models.animatediff.checkpoints import load_method_file, load_part
    from camvid.models.animatediff.key_mapping import convert_official_state_dict

    model = build_animatediff_method("cvd", "full", device="meta")
    for name in ("cvd_unet_full", "cameractrl-adv3_unet_full"):
        state = convert_official_state_dict({k: torch.empty(e.shape, device="meta")
                                             for k, e in load_manifest(name).items()})
        wanted = {k for k in model.unet.state_dict() if name == "cvd_unet_full" or ".epi_modules." not in k}
        load_part(model.unet, state, wanted, name)
    ckpt = {"pose_encoder_state_dict": {k: torch.empty(e.shape, device="meta") for k, e in
                                        load_manifest("cameractrl-adv3_pose_encoder_state_dict").items()},
            "attention_processor_state_dict": {k: torch.empty(e.shape, device="meta") for k, e in
                                               load_manifest("cameractrl-adv3_attention_processor_state_dict").items()}}
    torch.save(ckpt, tmp_path / "CameraCtrl.ckpt")
    assert load_method_file(model, tmp_path / "CameraCtrl.ckpt") == "CameraCtrl.ckpt"
    _meta_file(tmp_path / "CVD.ckpt", load_manifest("cvd_unet_trainable_dict"), wrap="unet_trainable_dict")
    assert load_method_file(model, tmp_path / "CVD.ckpt") == "CVD.ckpt"
    # CVD.ckpt given to a CameraCtrl model: named, not half-loaded
    cameractrl = build_animatediff_method("cameractrl", "full", device="meta")
    with pytest.raises(ValueError, match="CVD.ckpt but model=cameractrl has no CVD sync modules"):
        load_method_file(cameractrl, tmp_path / "CVD.ckpt")


def test_wrong_kind_files_are_named_before_allocation(tmp_path):
    ckpt = {"pose_encoder_state_dict": {k: torch.empty(e.shape, device="meta") for k, e in
                                        load_manifest("cameractrl-adv3_pose_encoder_state_dict").items()},
            "attention_processor_state_dict": {}}
    torch.save(ckpt, tmp_path / "CameraCtrl.ckpt")
    with pytest.raises(ValueError) as err:
        build_dynamicrafter_method("cami2v", "256", device="meta", pretrained=str(tmp_path / "CameraCtrl.ckpt"))
    msg = str(err.value)
    assert "CameraCtrl.ckpt" in msg and "CameraCtrl's AnimateDiff checkpoint" in msg
    assert "expected a DynamiCrafter model.ckpt" in msg and "pose_encoder_state_dict" in msg
    # a trainable-only file given as the base: says what it looks like and what is missing
    trainable = {k: e for k, e in load_manifest("cami2v_256x256").items() if is_camera_key(k)}
    _meta_file(tmp_path / "256_cami2v.pt", trainable, wrap=None)
    with pytest.raises(ValueError, match=r"base parameters are missing, e\.g\. \['.*trainable-only camera-method"):
        build_dynamicrafter_method("cami2v", "256", device="meta", pretrained=str(tmp_path / "256_cami2v.pt"))
    # ... and the same file as method_ckpt over the base loads
    _meta_file(tmp_path / "model.ckpt", load_manifest("dynamicrafter_256x256"))
    model = build_dynamicrafter_method("cami2v", "256", device="meta", pretrained=str(tmp_path / "model.ckpt"),
                                       method_ckpt=str(tmp_path / "256_cami2v.pt"))
    assert model.camera == "cami2v"
    # a base file as method_ckpt: the camera modules are missing
    with pytest.raises(ValueError, match="parameters of cami2v are missing"):
        model.load_weights(tmp_path / "model.ckpt", kind="method")


def test_wrong_kind_files_fail_before_the_real_build(tmp_path, monkeypatch):
    """Without device="meta" the files are checked against a model built on meta first: nothing is
    built for real (no camera modules) and no base is loaded before a wrong-kind file is named."""
    from camvid.models.dynamicrafter import builder

    devices = []
    real_build = builder._build
    monkeypatch.setattr(builder, "_build", lambda *a, **k: (devices.append(str(torch.get_default_device())),
                                                           real_build(*a, **k))[1])
    torch.save({"pose_encoder_state_dict": {}, "attention_processor_state_dict": {}}, tmp_path / "CameraCtrl.ckpt")
    with pytest.raises(ValueError, match=r"CameraCtrl.ckpt: the file looks like CameraCtrl's AnimateDiff checkpoint"):
        build_dynamicrafter_method("cami2v", "256", pretrained=str(tmp_path / "CameraCtrl.ckpt"))
    _meta_file(tmp_path / "model.ckpt", load_manifest("dynamicrafter_256x256"))
    with pytest.raises(ValueError, match=r"model.ckpt: \d+ parameters of cami2v are missing, e\.g\. \['model\.diffusion"
                                         r".*The file looks like a full DynamiCrafter-family checkpoint"):
        build_dynamicrafter_method("cami2v", "256", pretrained=str(tmp_path / "model.ckpt"),
                                   method_ckpt=str(tmp_path / "model.ckpt"))
    assert devices == ["meta", "meta"]  # one shadow build per call, nothing built for real


# ----------------------------------------------------------------------------- encoder key mappings

SMALL_TEXT = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                  projection_dim=32, bos_token_id=60, eos_token_id=61)
SMALL_IMAGE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28,
                   patch_size=14, projection_dim=16)
SMALL_VAE = dict(block_out_channels=(8, 16, 32, 32), norm_num_groups=8)  # shortcuts where the release has them


def _randomise(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))


def _official(encoder, seed: int = 0) -> dict[str, torch.Tensor]:
    """The encoder's weights in the OpenCLIP layout, with random values for the unused tensors."""
    gen = torch.Generator().manual_seed(seed)
    state = {"model." + k: v for k, v in convert_to_official(encoder.key_map, encoder.inner.state_dict()).items()}
    shapes = {"text_projection": (encoder.dim, encoder.dim), "logit_scale": (), "positional_embedding": (77, 32),
              "token_embedding.weight": (64, 32), "ln_final.weight": (32,), "ln_final.bias": (32,)}
    for key in encoder.unused_keys:
        state["model." + key] = torch.randn(shapes[key], generator=gen)
    return state


@pytest.mark.parametrize("kind", ["text", "image"])
def test_openclip_key_mapping_round_trips(kind):
    torch.manual_seed(0)
    enc = OpenCLIPTextEncoder(SMALL_TEXT) if kind == "text" else OpenCLIPImageEncoder(SMALL_IMAGE)
    _randomise(enc, 1)
    official = _official(enc)
    assert any(k.endswith("attn.in_proj_weight") for k in official)  # q/k/v fused again
    other = OpenCLIPTextEncoder(SMALL_TEXT) if kind == "text" else OpenCLIPImageEncoder(SMALL_IMAGE)
    ours, unused = other.from_official(official, "test")
    assert sorted(unused) == sorted(f"model.{k}" for k in enc.unused_keys)
    other.load_state_dict(ours, strict=False)
    for key, value in enc.state_dict().items():
        torch.testing.assert_close(other.state_dict()[key], value, rtol=0, atol=0)
    official.pop(next(k for k in official if "resblocks.0.ln_1" in k))
    with pytest.raises(ValueError, match=r"1 missing key\(s\) \['.*resblocks.0.ln_1"):
        other.from_official(official, "test")


def test_ldm_vae_key_mapping_round_trips():
    from camvid.models.ldm_vae import LDMFirstStage

    src = LDMFirstStage(SMALL_VAE)
    _randomise(src, 2)
    official = src.to_official()
    assert "decoder.up.0.block.0.conv1.weight" in official and official["encoder.mid.attn_1.q.weight"].ndim == 4
    dst = LDMFirstStage(SMALL_VAE)
    ours, _ = dst.from_official(official, "test")
    dst.load_state_dict(ours, strict=False)
    video = torch.rand(1, 2, 3, 16, 16) * 2 - 1
    src.sample_posterior = dst.sample_posterior = False
    torch.testing.assert_close(dst.encode(video), src.encode(video))
    # LDM's decoder.up.0 is the last (full-resolution) level: diffusers' up_blocks.3
    torch.testing.assert_close(dst.vae.decoder.up_blocks[3].resnets[0].conv1.weight,
                               official["decoder.up.0.block.0.conv1.weight"])


def _ln(x, state, name):
    return F.layer_norm(x, x.shape[-1:], state[f"{name}.weight"], state[f"{name}.bias"], 1e-5)


def _openclip_block(x, s, p, heads, causal):
    """One OpenCLIP residual block written from the official tensors (fused in_proj)."""
    h = _ln(x, s, f"{p}.ln_1")
    q, k, v = (h @ s[f"{p}.attn.in_proj_weight"].t() + s[f"{p}.attn.in_proj_bias"]).chunk(3, dim=-1)
    B, L, D = q.shape
    q, k, v = (t.view(B, L, heads, D // heads).transpose(1, 2) for t in (q, k, v))
    att = (q @ k.transpose(-1, -2)) / (D // heads) ** 0.5
    if causal:
        att = att.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf"))
    o = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, L, D)
    x = x + o @ s[f"{p}.attn.out_proj.weight"].t() + s[f"{p}.attn.out_proj.bias"]
    h = _ln(x, s, f"{p}.ln_2")
    h = F.gelu(h @ s[f"{p}.mlp.c_fc.weight"].t() + s[f"{p}.mlp.c_fc.bias"])
    return x + h @ s[f"{p}.mlp.c_proj.weight"].t() + s[f"{p}.mlp.c_proj.bias"]


def _tokenizer_folder(path):
    """A tiny CLIP BPE tokenizer: single characters (and end-of-word forms), no merges."""
    vocab = {}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = 60
    vocab["<|endoftext|>"] = 61
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    return path


def test_openclip_towers_match_the_official_computation(tmp_path):
    """Penultimate-layer text tokens and all image tokens, against OpenCLIP's forward written here
    from the checkpoint tensors."""
    torch.manual_seed(0)
    text = OpenCLIPTextEncoder(SMALL_TEXT, tokenizer_path=_tokenizer_folder(tmp_path / "tok"))
    _randomise(text, 3)
    s = {k[len("model."):]: v for k, v in _official(text).items()}
    ids = text.token_ids(["a room", ""])
    assert ids[0, :8].tolist() == [60, 1, 34, 28, 28, 25, 61, 0]  # start, a</w>, r, o, o, m</w>, end, zero pad
    x = s["token_embedding.weight"][ids] + s["positional_embedding"]
    for i in range(SMALL_TEXT["num_hidden_layers"] - 1):  # the last block is skipped ("penultimate")
        x = _openclip_block(x, s, f"transformer.resblocks.{i}", 2, causal=True)
    torch.testing.assert_close(text(["a room", ""]), _ln(x, s, "ln_final"), rtol=1e-4, atol=1e-4)

    image = OpenCLIPImageEncoder(SMALL_IMAGE)
    _randomise(image, 4)
    s = {k[len("model."):]: v for k, v in _official(image).items()}
    img = torch.rand(2, 3, 40, 56) * 2 - 1
    x = F.interpolate(img, size=(28, 28), mode="bicubic", align_corners=True, antialias=True)
    x = ((x + 1) / 2 - torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)) \
        / torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    x = F.conv2d(x, s["visual.conv1.weight"], stride=14).flatten(2).transpose(1, 2)
    x = torch.cat([s["visual.class_embedding"].expand(2, 1, -1), x], dim=1) + s["visual.positional_embedding"]
    x = _ln(x, s, "visual.ln_pre")
    for i in range(SMALL_IMAGE["num_hidden_layers"]):
        x = _openclip_block(x, s, f"visual.transformer.resblocks.{i}", 2, causal=False)
    out = image(img)
    assert out.shape == (2, 5, 32)
    torch.testing.assert_close(out, x, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- the full-size path, small


def _small_family(method: str, **kw):
    unet = {k: v for k, v in dynamicrafter_unet_config("tiny").items()}
    unet["context_dim"] = SMALL_TEXT["hidden_size"]
    proj = dict(resampler_config("tiny"))
    proj.pop("embedding_dim"), proj.pop("output_dim")
    return build_dynamicrafter_method(method, "256", num_frames=4, unet_overrides=unet, proj_overrides=proj,
                                      encoder_config={"first_stage": SMALL_VAE, "text": SMALL_TEXT,
                                                      "image": SMALL_IMAGE}, **kw)


def _official_state(model) -> dict[str, torch.Tensor]:
    out = {k: v for k, v in model.state_dict().items() if not k.startswith(("first_stage_model.", "cond_stage_model.",
                                                                            "embedder."))}
    out.update({f"first_stage_model.{k}": v for k, v in model.first_stage_model.to_official().items()})
    out.update({f"cond_stage_model.{k}": v for k, v in _official(model.cond_stage_model).items()})
    out.update({f"embedder.{k}": v for k, v in _official(model.embedder).items()})
    out["model.diffusion_model.framestride_embed.0.weight"] = out.pop("model.diffusion_model.fps_embedding.0.weight")
    return out


def test_base_plus_method_files_build_materialise_and_sample(tmp_path):
    from camvid.diffusion.sampler import sample_video

    torch.manual_seed(0)
    src = _small_family("cami2v", attn="epipolar")
    _randomise(src, 5)
    state = _official_state(src)
    base = {k: v for k, v in state.items() if not is_camera_key(k)}
    torch.save({"state_dict": base}, tmp_path / "model.ckpt")
    torch.save({k: v for k, v in state.items() if is_camera_key(k)}, tmp_path / "256_cami2v.pt")

    tok = _tokenizer_folder(tmp_path / "tok")
    model = _small_family("cami2v", attn="epipolar", pretrained=str(tmp_path / "model.ckpt"),
                          method_ckpt=str(tmp_path / "256_cami2v.pt"), tokenizer_path=str(tok))
    assert meta_tensors(model) == []
    for key, value in src.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0, msg=key)
    src.cond_stage_model.tokenizer_path = tok
    K = torch.tensor([[40.0, 0, 32], [0, 40, 32], [0, 0, 1]]).expand(1, 4, 3, 3).clone()
    c2w = torch.eye(4).expand(1, 4, 4, 4).clone()
    c2w[0, :, 0, 3] = torch.linspace(0, 0.3, 4)
    batch = {"video": torch.rand(1, 4, 3, 64, 64) * 2 - 1, "K": K, "c2w": c2w, "caption": ["a room"],
             "cond_index": torch.zeros(1, dtype=torch.long), "frame_stride": torch.tensor([8])}
    outs = []
    for m in (model, src):
        torch.manual_seed(0)  # the VAE draws a posterior sample of the conditioning frame
        outs.append(sample_video(m.eval(), batch, num_steps=2, generator=torch.Generator().manual_seed(0),
                                 guidance={"scale": 7.5, "uncond_drops": ["text", "image"], "rescale": 0.7}))
    assert outs[0].shape == (1, 4, 3, 64, 64) and torch.isfinite(outs[0]).all()
    torch.testing.assert_close(outs[0], outs[1])


def test_headline_command_gets_past_model_construction(tmp_path):
    """``python src/train.py model=cami2v attn=epipolar data=re10k pretrained=...``: the composed config
    builds the full-size model and loads the (manifest-shaped) released file; a dry run on meta."""
    from camvid.models.registry import build_method
    from conftest import compose

    _meta_file(tmp_path / "model.ckpt", load_manifest("dynamicrafter_256x256"))
    tok = _tokenizer_folder(tmp_path / "tok")
    cfg = compose(["model=cami2v", "attn=epipolar", "data=re10k", f"pretrained={tmp_path / 'model.ckpt'}",
                   f"backbone.kwargs.tokenizer_path={tok}", "logger=none"])
    with torch.device("meta"):
        model = build_method(cfg)
    assert model.camera == "cami2v" and model.attn_variant == "epipolar"
    assert type(model.cond_stage_model).__name__ == "OpenCLIPTextEncoder"
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        build_method(compose(["model=cami2v", f"pretrained={tmp_path / 'model.ckpt'}",
                              f"backbone.kwargs.tokenizer_path={tmp_path / 'nowhere'}", "logger=none"]))


@pytest.mark.parametrize("model,option", [("cvd", {"band": "soft"}), ("cami2v", {"grid": "cami2v_release"})])
def test_released_masks_follow_the_method_checkpoint(model, option):
    """CVD.ckpt was trained with the soft band, the released CamI2V checkpoints with their own mask
    grid: ``released_masks=auto`` switches them on whenever such a file is loaded."""
    from camvid.models.camera.context import CONTEXT_KWARGS
    from camvid.models.registry import released_mask_kwargs

    assert released_mask_kwargs(model, None) == {}  # training from scratch keeps the config's masks
    assert released_mask_kwargs(model, "method.ckpt", "false") == {}
    assert released_mask_kwargs("cameractrl", "method.ckpt") == {}
    with pytest.raises(ValueError, match="released_masks=sometimes"):
        released_mask_kwargs(model, "method.ckpt", "sometimes")
    [key] = option
    if key in CONTEXT_KWARGS:
        assert released_mask_kwargs(model, "method.ckpt") == option
        assert released_mask_kwargs(model, None, "true") == option
    else:  # the attention module without the option: said, not silently ignored
        with pytest.warns(UserWarning, match=f"no \\['{key}'\\] option"):
            assert released_mask_kwargs(model, "method.ckpt") == {}
