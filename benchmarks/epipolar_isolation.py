"""Can CamI2V's epipolar attention learn a camera warp on its own? The block outside the UNet.

Pairs of frames (the conditioning frame and a later one) are rendered from synthetic rooms along one
trajectory kind. The conditioning frame's tokens carry its content (pixel-unshuffled 4x4 patches, one
conv) plus its pose features; the other frame's tokens carry pose features only, as a frame at pure
noise does. CamI2V's epipolar block (4 registers, the project's masks) runs over both, and its output at
the second frame, decoded by one linear layer, must reproduce that frame. Test pairs come from unseen
rooms. Two references on the same test pairs: the conditioning frame itself (a model that ignores the
camera) and each target's per-image mean colour (the best camera-free constant).

This separates the attention's ability to learn a warp from everything around it in the diffusion model
(noisy queries, the frozen base, the diffusion loss): if the block alone beats both references on unseen
rooms, the camera path can express a warp, and what stops the tiny CamI2V is around it.

    python benchmarks/epipolar_isolation.py                      # pans, 1000 steps
    python benchmarks/epipolar_isolation.py --kinds truck forward --fourier 4
    python benchmarks/epipolar_isolation.py --kinds truck forward orbit mixed --query-noise

Steps towards the UNet, one at a time (docs/diffusion.md has the tables):

    --residual        each frame predicted as the conditioning frame plus a decoded change
    --static-copy     the target's tokens and the residual stream carry the conditioning frame's content at
                      the same position (what the base's temporal attention copies there); the block adds to it
    --base-steps N    with --static-copy: a camera-blind content conv + decoder trained first, then frozen
    --static-gate     with --static-copy: a learnable scalar on the copied content (starts at 1)
    --out-init default  the block's output projection starts as nn.Linear does, not at zero
    --timesteps LO HI the target's own content noised to a DynamiCrafter timestep in [LO, HI] (tested at HI)
    --frames 8 --batch 1 --lr 3e-3   the demo's clip length, batch and a larger step

The last column of the printed table scores the same test frames predicted with another test clip's
cameras: 1.00 means the camera is ignored, lower means the block follows the camera it is given.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from camvid.attention import AttentionContext, build_cross_frame_attention  # noqa: E402
from camvid.data import synthetic as syn  # noqa: E402
from camvid.diffusion.schedule import make_alphas_cumprod, q_sample  # noqa: E402
from camvid.geometry.cameras import relative_poses  # noqa: E402
from camvid.geometry.plucker import plucker_rays  # noqa: E402
from camvid.models.camera.pose_encoder import CameraPoseEncoder  # noqa: E402

SIZE, PATCH, WIDTH = 64, 4, 32
ALPHAS_CUMPROD = make_alphas_cumprod()  # DynamiCrafter's training schedule


def render_pairs(seeds, kinds, frames: list[int]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(video (F, 3, H, W) in [-1, 1], K (F, 3, 3), c2w (F, 4, 4) relative to the first) per room and kind:
    ``frames`` of an 8-frame trajectory, the first of them the conditioning frame."""
    K = syn.default_intrinsics(SIZE, SIZE, 60)
    out = []
    for seed in seeds:
        scene = syn.make_scene(seed, 128)
        for kind in kinds:
            c2w = syn.make_trajectory(kind, 8, seed)[frames]
            images, _ = syn.render_frames(scene, K, c2w, SIZE, SIZE)
            video = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
            out.append((video, torch.from_numpy(K).float().expand(len(frames), 3, 3).clone(),
                        relative_poses(torch.from_numpy(c2w).double(), 0).float()))
    return out


class IsolatedBlock(nn.Module):
    def __init__(self, fourier: int, query_noise: bool = False, num_frames: int = 2, residual: bool = False,
                 static_copy: bool = False, out_init: str = "zero", static_gate: bool = False):
        super().__init__()
        self.query_noise = query_noise
        self.residual = residual
        self.static_copy = static_copy
        self.use_block = True
        self.timesteps: tuple[int, int] | None = None
        # the UNet's residual stream at a target frame: the conditioning frame's content at the same position
        # (what the base's temporal attention copies there), scaled by a learnable gate when asked
        self.gate = nn.Parameter(torch.ones(())) if static_gate else None
        self.pose = CameraPoseEncoder(PATCH, (WIDTH,), nums_rb=1, temporal_attention_nhead=4,
                                      temporal_position_encoding_max_len=num_frames, fourier_bands=fourier)
        self.content = nn.Conv2d(3 * PATCH * PATCH, WIDTH, 3, 1, 1)
        self.norm = nn.LayerNorm(WIDTH)
        self.block = build_cross_frame_attention("epipolar", WIDTH, 4, num_register_tokens=4)
        self.decode = nn.Linear(WIDTH, 3 * PATCH * PATCH)
        if out_init == "default":  # the block's output projection as a plain nn.Linear starts, not at zero
            self.block.epipolar_attn.to_out[0].reset_parameters()
        elif out_init != "zero":
            raise ValueError(f"out_init must be zero or default, got {out_init!r}")

    def forward(self, video, K, c2w) -> torch.Tensor:
        b, t, h = video.shape[0], video.shape[1], SIZE // PATCH
        f = self.pose(plucker_rays(K, c2w, SIZE, SIZE))[0].permute(0, 2, 3, 4, 1).reshape(b, t, h * h, WIDTH)
        content = video
        # test predictions all draw the same noise, so own and other cameras differ only in the cameras
        gen = self.noise_gen if self.training else torch.Generator().manual_seed(0)
        if self.timesteps is not None:  # the target frames as the UNet sees them at a training timestep
            lo, hi = self.timesteps
            step = torch.randint(lo, hi + 1, (b,), generator=gen) if self.training else torch.full((b,), hi)
            noise = torch.randn(video[:, 1:].shape, generator=gen)
            noisy = q_sample(video[:, 1:], step.view(b, 1, 1, 1, 1), noise, ALPHAS_CUMPROD)
            content = torch.cat([video[:, :1], noisy], dim=1)
        elif self.query_noise:  # the frames as the UNet sees them at t = T: pure noise through the same content path
            noise = torch.randn(video[:, 1:].shape, generator=gen)
            content = torch.cat([video[:, :1], noise], dim=1)
        c = self.content(F.pixel_unshuffle(content.flatten(0, 1), PATCH))  # (b t, C, h, h)
        c = c.permute(0, 2, 3, 1).reshape(b, t, h * h, WIDTH)
        if self.static_copy:  # the target frames carry the conditioning frame's content at the same position
            own = c[:, 1:] if self.timesteps is not None else 0.0  # and their own noisy content, if any
            c = torch.cat([c[:, :1], c[:, :1] + own], dim=1)
        elif not self.query_noise and self.timesteps is None:  # the target frames carry no content at all, only their pose features
            c = torch.cat([c[:, :1], torch.zeros_like(c[:, 1:])], dim=1)
        tokens = self.norm(f + c)
        ctx = AttentionContext(K=K, c2w=c2w, image_hw=(SIZE, SIZE), cond_index=torch.zeros(b, dtype=torch.long),
                               num_views=1, path="dense")
        if self.static_copy:  # x + block(x), decoded: the block's output adds to the copied content
            stream = c[:, 1:] * (self.gate if self.gate is not None else 1.0)
            if self.use_block:
                stream = stream + self.block(tokens, ctx, (h, h))[:, 1:]
            out = self.decode(stream)
        else:
            out = self.decode(self.block(tokens, ctx, (h, h))[:, 1:])  # (b, t-1, h h, 48)
        out = out.reshape(b, t - 1, h, h, -1).permute(0, 1, 4, 2, 3)  # pixel-unshuffled frames 1..t-1
        if self.residual:  # as the tiny recipe's x0: the conditioning frame plus a change
            out = out + unshuffle(video[:, :1])
        return out


def unshuffle(frames: torch.Tensor) -> torch.Tensor:
    """(B, F, 3, H, W) -> (B, F, 48, H/4, W/4): the 4x4 patches the model predicts."""
    return F.pixel_unshuffle(frames.flatten(0, 1), PATCH).unflatten(0, frames.shape[:2])


def stack(pairs):
    return [torch.stack([p[i] for p in pairs]) for i in range(3)]


def train_step(model: nn.Module, opt: torch.optim.Optimizer, train, batch: int, gen: torch.Generator) -> float:
    """One step on ``batch`` random training clips; returns the loss."""
    idx = torch.randint(len(train), (batch,), generator=gen).tolist()
    video, K, c2w = stack([train[i] for i in idx])
    loss = F.mse_loss(model(video, K, c2w), unshuffle(video[:, 1:]))
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", nargs="+", default=["pan"], help="trajectory kinds (camvid.data.synthetic)")
    p.add_argument("--frame", type=int, default=4, help="which frame of the 8-frame trajectory is the target")
    p.add_argument("--frames", type=int, default=2,
                   help="frames per clip, spread over the 8-frame trajectory (2: frame 0 and --frame); all but the "
                        "first are targets, and the block attends over all of them as CamI2V's does")
    p.add_argument("--train-scenes", type=int, default=32)
    p.add_argument("--test-scenes", type=int, default=8)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--fourier", type=int, default=0, help="Fourier bands of the Plücker rays (CameraPoseEncoder)")
    p.add_argument("--query-noise", action="store_true",
                   help="the target frame's tokens also carry its content at pure noise (Gaussian noise through the "
                        "content conv), as the UNet's tokens of that frame do at t = T")
    p.add_argument("--residual", action="store_true",
                   help="predict each frame as the conditioning frame plus the decoded change (the tiny "
                        "recipe's first_frame=replace_residual)")
    p.add_argument("--static-copy", action="store_true",
                   help="as in the UNet: the target frame's tokens and the residual stream carry the conditioning "
                        "frame's content at the same position (the base's temporal attention), the block's output "
                        "adds to that stream, and the sum is decoded")
    p.add_argument("--base-steps", type=int, default=0,
                   help="with --static-copy: first train the content conv and the decoder without the block (a "
                        "camera-blind base), then freeze them and train the block (the papers' frozen base)")
    p.add_argument("--out-init", choices=["zero", "default"], default="zero",
                   help="the block's output projection at zero (CamI2V) or nn.Linear's default initialisation")
    p.add_argument("--static-gate", action="store_true",
                   help="with --static-copy: a learnable scalar on the copied content (starts at 1), trained with the block")
    p.add_argument("--timesteps", type=int, nargs=2, metavar=("LO", "HI"),
                   help="the target frames' tokens carry their own content noised to a timestep drawn from [LO, HI] "
                        "in training (DynamiCrafter's schedule), as the UNet's do; tested at HI")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.time()
    if not 2 <= args.frames <= 8:
        raise SystemExit(f"--frames must be 2..8, got {args.frames}")
    frames = [0, args.frame] if args.frames == 2 else [round(7 * i / (args.frames - 1)) for i in range(args.frames)]
    train = render_pairs(range(100, 100 + args.train_scenes), args.kinds, frames)
    test = stack(render_pairs(range(1000, 1000 + args.test_scenes), args.kinds, frames))
    target = unshuffle(test[0][:, 1:])
    static = F.mse_loss(unshuffle(test[0][:, :1]).expand_as(target), target).item()
    flat = F.mse_loss(target.mean((-2, -1), keepdim=True).expand_as(target), target).item()
    if (args.base_steps or args.static_gate) and not args.static_copy:
        raise SystemExit("--base-steps and --static-gate need --static-copy")
    model = IsolatedBlock(args.fourier, args.query_noise, len(frames), args.residual, args.static_copy,
                          args.out_init, args.static_gate)
    model.noise_gen = torch.Generator().manual_seed(args.seed + 1)
    if args.timesteps:
        if not 0 <= args.timesteps[0] <= args.timesteps[1] <= 999:
            raise SystemExit(f"--timesteps needs 0 <= LO <= HI <= 999, got {args.timesteps}")
        model.timesteps = tuple(args.timesteps)
    gen = torch.Generator().manual_seed(args.seed)
    if args.base_steps:
        base = list(model.content.parameters()) + list(model.decode.parameters())
        opt = torch.optim.Adam(base, lr=args.lr)
        model.use_block = False
        for _ in range(args.base_steps):
            train_step(model, opt, train, args.batch, gen)
        model.use_block = True
        for prm in base:
            prm.requires_grad_(False)
        model.eval()
        with torch.no_grad():
            base_mse = F.mse_loss(model(*test), target).item()
        model.train()
        print(f"camera-blind base: {args.base_steps} steps, then frozen; with the block's zero output its test MSE "
              f"is {base_mse:.4f} ({base_mse / static:.2f} of the conditioning frame's)")
    opt = torch.optim.Adam([prm for prm in model.parameters() if prm.requires_grad], lr=args.lr)
    print(f"kinds {args.kinds}, frames {frames}, {len(train)} training clips, {args.test_scenes} unseen rooms; "
          f"fourier {args.fourier}; query noise {args.query_noise}; residual {args.residual}; static copy {args.static_copy}, "
          f"gate {args.static_gate}, out init {args.out_init}; timesteps {args.timesteps}; batch {args.batch}, lr {args.lr}; rendered in {time.time() - t0:.0f} s")
    print(f"test references: conditioning frame {static:.4f}, per-image mean colour {flat:.4f} (MSE, [-1, 1] pixels)")
    # the same test pairs with another test clip's cameras: a model that ignores the camera scores 1.00
    wrong_c2w = test[2].roll(1, dims=0)
    print("| step | train MSE (last 100) | test MSE | test / conditioning frame | test / mean colour | "
          "test / with another clip's cameras |")
    print("|---|---|---|---|---|---|")
    losses = []
    for step in range(args.steps):
        losses.append(train_step(model, opt, train, args.batch, gen))
        if (step + 1) % 100 == 0 or step + 1 == args.steps:
            model.eval()
            with torch.no_grad():
                test_mse = F.mse_loss(model(*test), target).item()
                wrong_mse = F.mse_loss(model(test[0], test[1], wrong_c2w), target).item()
            print(f"| {step + 1} | {sum(losses[-100:]) / len(losses[-100:]):.4f} | {test_mse:.4f} | "
                  f"{test_mse / static:.2f} | {test_mse / flat:.2f} | {test_mse / wrong_mse:.2f} |", flush=True)
            model.train()
    print(f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
