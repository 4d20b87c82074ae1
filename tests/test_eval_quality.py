"""FVD (both protocols), FID, KID, CLIP-T and CLIP-F with random-initialised local weight files."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from camvid.evaluation.networks.fid_inception import FidInceptionV3, load_fid_inception
from camvid.evaluation.networks.i3d import InceptionI3d, load_i3d, load_stylegan_i3d
from camvid.evaluation.quality import (
    ClipScorer,
    FvdScorer,
    frame_fid_kid,
    frechet_distance,
    preprocess_stylegan,
    preprocess_videogpt,
)
from camvid.evaluation.weights import MissingWeights, require_weights


def _signal_preserving_init(model: nn.Module, seed: int) -> nn.Module:
    """He-normal convolutions so a deep random network still separates its inputs (the default
    init shrinks activations layer after layer, making every feature nearly constant)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear)):
            fan_in = m.weight[0].numel()
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
    return model


def _videos(n, T=8, H=40, W=48, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 200, (n, T, H // 8, W // 8, 3)).astype(np.uint8)
    return np.repeat(np.repeat(base, 8, axis=2), 8, axis=3)  # blocky content: features vary per video


def test_frechet_distance_hand_case():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 3))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    # same covariance, mean shifted by (1, 2, 2): distance 9
    assert frechet_distance(x, x + [1.0, 2.0, 2.0]) == pytest.approx(9.0, rel=1e-9)
    # N(0, I) vs N(0, 4 I) in 3-d: tr(I + 4I - 2 * 2I) = 3, up to sampling noise
    assert frechet_distance(x, 2 * x) == pytest.approx(3.0, rel=0.1)


def test_preprocessing_shapes_and_ranges():
    v = torch.as_tensor(_videos(2, H=48, W=64))
    a = preprocess_videogpt(v, 32)
    b = preprocess_stylegan(v, 24)
    assert a.shape == (2, 3, 8, 32, 32) and b.shape == (2, 3, 8, 24, 24)
    assert a.min() >= -1 and a.max() <= 1 and b.min() >= -1 and b.max() <= 1


@pytest.fixture(scope="module")
def i3d_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "i3d_pretrained_400.pt"
    torch.manual_seed(0)
    torch.save(_signal_preserving_init(InceptionI3d(), 0).state_dict(), path)
    return path


def test_i3d_state_dict_layout_and_output(i3d_file):
    state = torch.load(i3d_file, weights_only=True)
    for key in ("Conv3d_1a_7x7.conv3d.weight", "Mixed_3b.b1b.bn.running_mean", "Mixed_5c.b3b.conv3d.weight",
                "logits.conv3d.weight", "logits.conv3d.bias"):
        assert key in state
    assert state["Conv3d_1a_7x7.conv3d.weight"].shape == (64, 3, 7, 7, 7)
    assert state["logits.conv3d.weight"].shape == (400, 1024, 1, 1, 1)
    model = load_i3d(i3d_file)
    out = model(torch.zeros(1, 3, 8, 64, 64))
    assert out.shape == (1, 400)


def test_fvd_videogpt_protocol(i3d_file):
    scorer = FvdScorer("videogpt", load_i3d(i3d_file), resolution=64)
    a = _videos(4, seed=1)
    e1, e2 = scorer.embed(a), scorer.embed(a)
    assert e1.shape == (4, 400)
    np.testing.assert_array_equal(e1, e2)  # deterministic
    same = scorer(a, a)
    shifted = scorer(a, (a // 3 + 150).astype(np.uint8))
    assert abs(same) < 1e-6 * max(1.0, shifted)
    assert shifted > 0


class _TinyStyleganDetector(nn.Module):
    """Stands in for StyleGAN-V's TorchScript I3D: same call signature, tiny random network."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 16, 3, stride=2)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        if rescale:
            x = x * 2 - 1
        return torch.relu(self.conv(x)).mean(dim=(2, 3, 4))


def test_fvd_stylegan_protocol_with_torchscript(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(_TinyStyleganDetector()).save(str(path))
    scorer = FvdScorer("stylegan", load_stylegan_i3d(path))
    a = _videos(4, seed=2)
    assert scorer.embed(a).shape == (4, 16)
    assert abs(scorer(a, a)) < 1e-9
    assert scorer(a, 255 - a) > 1e-3


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "pt_inception-2015-12-05-6726825d.pth"
    torch.manual_seed(0)
    torch.save(_signal_preserving_init(FidInceptionV3(), 0).state_dict(), path)
    return path


def test_fid_inception_layout(inception_file):
    state = torch.load(inception_file, weights_only=True)
    assert state["fc.weight"].shape == (1008, 2048)
    assert state["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape == (384, 384, 3, 1)
    assert "Mixed_5b.branch_pool.bn.running_var" in state
    feats = load_fid_inception(inception_file)(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
    assert feats.shape == (2, 2048)


def test_fid_kid_self_zero_shifted_positive(inception_file):
    torch.manual_seed(0)
    net = load_fid_inception(inception_file)
    frames = _videos(1, T=3, H=64, W=64, seed=3)[0]
    same = frame_fid_kid(frames, frames, net, kid_subsets=3, kid_subset_size=2)
    other = frame_fid_kid(frames, (255 - frames), net, kid_subsets=3, kid_subset_size=2)
    assert abs(same["FID"]) < 1e-3 * other["FID"]
    assert abs(same["KID"]) < 0.05 * other["KID"]  # KID draws random subsets: unbiased, not exactly 0
    assert other["FID"] > 0 and other["KID"] > 0


def _tiny_clip(tmp_path):
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({c + "</w>": len(letters) + i for i, c in enumerate(letters)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    model_dir = tmp_path / "clip"
    CLIPTokenizer(vocab=str(tmp_path / "vocab.json"), merges=str(tmp_path / "merges.txt")).save_pretrained(model_dir)
    eos = vocab["<|endoftext|>"]
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=eos - 1,
                         eos_token_id=eos, pad_token_id=eos),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(model_dir)
    return model_dir


def test_clip_t_and_clip_f(tmp_path):
    scorer = ClipScorer(_tiny_clip(tmp_path))
    a, b = _videos(2, T=4, H=48, W=64, seed=4)
    t1 = scorer.clip_t(a, "a red room")
    assert -1.0 <= t1 <= 1.0 and t1 == scorer.clip_t(a, "a red room")
    assert t1 != scorer.clip_t(a, "blue sky over hills")
    assert scorer.clip_f([a, a]) == pytest.approx(1.0, abs=1e-5)
    assert scorer.clip_f([a, b]) < 0.999
    with pytest.raises(ValueError, match="two videos"):
        scorer.clip_f([a])


def test_missing_weights_name_the_file_and_source(tmp_path):
    with pytest.raises(MissingWeights, match="i3d_torchscript.pt.*dropbox"):
        require_weights("i3d_stylegan", tmp_path / "i3d_torchscript.pt")
    with pytest.raises(MissingWeights, match="pytorch-fid"):
        require_weights("fid_inception", None)
