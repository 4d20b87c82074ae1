"""The inspection notebooks run top to bottom on tiny runs (they assert what they show), stay without outputs
in git, and their package helpers (bands, band mass, recovered cameras) compute what they claim."""

from __future__ import annotations

import json
import shutil

import nbformat
import numpy as np
import pytest
import torch
from nbclient import NotebookClient

from conftest import REPO, compose, data_overrides, run_overrides

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def _errors(nb) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]


def _stream(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                   if o.output_type == "stream")


def _images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebooks_are_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip the outputs"


def test_epipolar_masks_notebook_executes(tmp_path):
    path = REPO / "notebooks" / "epipolar_masks.ipynb"
    work = tmp_path / path.name
    shutil.copy(path, work)
    nb = nbformat.read(work, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert not _errors(nb)
    assert (tmp_path / "epipolar_masks.png").is_file()


@pytest.fixture(scope="module")
def tiny_runs(data_root, tmp_path_factory):
    """Two-step runs of the tiny CamI2V (epipolar) and, lazily, the comparison models."""
    from camvid.training.loop import train

    made = {}

    def get(model: str, attn: str | None = None):
        key = (model, attn)
        if key not in made:
            family = "animatediff" if model == "cvd" else "dynamicrafter"
            run = tmp_path_factory.mktemp(f"run_{model}_{attn}")
            extra = [f"model={model}", f"backbone=tiny_{family}", *data_overrides(model, data_root)]
            train(compose(run_overrides(data_root, run, *extra, *([f"attn={attn}"] if attn else []))))
            made[key] = run
        return made[key]

    return get


def _run_attention(tmp_path, **params):
    from camvid.inspection.notebooks import execute_notebook

    html = tmp_path / "attention_maps.html"
    nb = execute_notebook(REPO / "notebooks" / "attention_maps.ipynb", params, repo=REPO, html=html)
    assert not _errors(nb) and html.stat().st_size > 10_000
    return nb


def test_attention_notebook_executes_on_a_tiny_run(tiny_runs, tmp_path):
    nb = _run_attention(tmp_path, CAMVID_NB_RUN=str(tiny_runs("cami2v", "epipolar")), CAMVID_NB_STEPS="2",
                        CAMVID_NB_TIMESTEPS="500", CAMVID_NB_QUERY="3,20,12")
    text = _stream(nb)
    assert "query Query(frame=3, x=20.0, y=12.0" in text and "captured 7 layers x 2 timesteps" in text  # 3 at the 16x16 level, 4 at 8x8
    assert "cami2v/epipolar" in text  # the band-mass table
    assert _images(nb) >= 6  # videos, bands, heads per level, layers, register share, band mass


@pytest.mark.slow
def test_attention_notebook_compares_models_and_cross_video(tiny_runs, tmp_path):
    compare = ",".join(str(tiny_runs("cami2v", a)) for a in ("full3d", "temporal"))
    nb = _run_attention(tmp_path, CAMVID_NB_RUN=str(tiny_runs("cami2v", "epipolar")), CAMVID_NB_STEPS="2",
                        CAMVID_NB_TIMESTEPS="500", CAMVID_NB_COMPARE=compare,
                        CAMVID_NB_CVD_RUN=str(tiny_runs("cvd")))
    text = _stream(nb)
    assert "cami2v/full3d" in text and "cami2v/temporal" in text and "no cross-frame attention" in text
    assert "CVD_RUN not set" not in text


@pytest.mark.slow  # ~30 s; its helpers are tested quickly below
def test_cameras_notebook_executes_on_sampled_and_evaluated_videos(tiny_runs, data_root, tmp_path):
    from camvid.evaluation.pipeline import run_evaluation
    from camvid.inspection.notebooks import execute_notebook
    from camvid.sampling import run_sampling

    samples, evald = tmp_path / "samples", tmp_path / "eval"
    run_sampling(compose(["steps=2", f"run_dir={tiny_runs('cami2v', 'epipolar')}", f"test_data={data_root}",
                          "num_samples=1", "stride=1", f"out_dir={samples}"], config_name="sample"))
    run_evaluation({"samples_dir": str(samples), "out_dir": str(evald), "metrics": ["camera"],
                    "camera": {"trials": 1, "progress": False}})
    html = tmp_path / "cameras.html"
    nb = execute_notebook(REPO / "notebooks" / "cameras.ipynb", {"CAMVID_NB_SAMPLES": str(samples),
                                                                  "CAMVID_NB_EVAL": str(evald)}, repo=REPO, html=html)
    assert not _errors(nb) and html.is_file()
    text = _stream(nb)
    assert "from evaluation results.json" in text and "camvid evaluation of" in text
    assert "(mean over frames 1..T-1)" in text  # the camera-following scores (synthetic data has depth)
    assert _images(nb) >= 4  # videos, camera paths, camera following per frame, warped reference


def test_execute_notebook_names_unknown_parameters():
    from camvid.inspection.notebooks import execute_notebook

    with pytest.raises(ValueError, match="unknown notebook parameter.*CAMVID_NB_RUNS"):
        execute_notebook(REPO / "notebooks" / "cameras.ipynb", {"CAMVID_NB_RUNS": "x"}, repo=REPO)


# ------------------------------------------------------------------ package helpers behind the notebooks


def _clip_cameras(B=2, T=3, hw=(48, 64)):
    H, W = hw
    K = torch.tensor([[0.9 * W, 0.0, W / 2], [0.0, 0.9 * W, H / 2], [0.0, 0.0, 1.0]]).expand(B, T, 3, 3).clone()
    c2w = torch.eye(4).repeat(B, T, 1, 1)
    c2w[:, :, 0, 3] = torch.linspace(0, 0.6, T)
    c2w[1, :, 1, 3] = torch.linspace(0, -0.3, T)
    return K, c2w


@pytest.mark.parametrize("variant,views,options", [
    ("epipolar", 1, {}), ("epipolar_ref", 1, {}), ("full3d", 1, {}), ("cross_video", 2, {}),
    ("epipolar", 1, {"grid": "cami2v_release", "threshold": 3.0}), ("cross_video", 2, {"tau": 2.5, "seed": 3})])
def test_bands_are_the_models_mask_rows(variant, views, options):
    from camvid.attention import AttentionContext, Query
    from camvid.attention.capture import query_position
    from camvid.inspection import band_rows, query_bands

    K, c2w = _clip_cameras()
    image_hw, feat_hw = (48, 64), (6, 8)
    cond = torch.tensor([0, 2])
    queries = [Query(1, 30.0, 20.0, 0), Query(2, 5.0, 40.0, 1)]
    band = band_rows(K, c2w, image_hw, feat_hw, variant, queries, cond_index=cond, num_views=views, **options)
    kind = {"epipolar": "all", "full3d": "all", "epipolar_ref": "ref", "cross_video": "cross"}[variant]
    mask = AttentionContext(K=K, c2w=c2w, image_hw=image_hw, cond_index=cond, num_views=views, path="dense",
                            **options).mask(kind, feat_hw)
    for i, qu in enumerate(queries):
        row, token, _ = query_position(qu, variant, 3, feat_hw, image_hw)
        got = band[i] if variant != "epipolar_ref" else band[i, int(cond[qu.sample])]
        assert torch.equal(got.reshape(-1), mask[row, token])
        if variant == "epipolar_ref":
            assert band[i].flatten(1).any(1).sum() <= 1  # only the reference frame holds the band
    # the drawn line passes through the cells of the band: every band cell centre is near the line
    qb = query_bands(K, c2w, image_hw, [feat_hw], queries[0], variant=variant, cond_index=cond, num_views=views,
                     **options)
    line, cells = qb[feat_hw].lines[-1], qb[feat_hw].band[-1].nonzero()
    if len(cells):
        centres = (cells.double() + 0.5) * torch.tensor([image_hw[0] / feat_hw[0], image_hw[1] / feat_hw[1]])
        dist = (line[0] * centres[:, 1] + line[1] * centres[:, 0] + line[2]).abs()
        width = options.get("threshold", options.get("tau", 0.5 * (8.0**2 + 8.0**2) ** 0.5))
        assert float(dist.max()) <= width + 0.5 + 1e-6  # (+ half a pixel: the release grid's offset)


def test_band_mass_splits_every_query_into_inside_outside_and_registers():
    from camvid.attention import LayerAttention, Query
    from camvid.inspection import band_mass

    g = torch.Generator().manual_seed(0)
    probs = torch.rand(2, 3, 2, 4, 2, 3, generator=g)
    regs = torch.rand(2, 3, 2, 2, generator=g)
    total = probs.sum((-3, -2, -1)) + regs.sum(-1)
    probs, regs = probs / total[..., None, None, None], regs / total[..., None]
    band = torch.zeros(2, 4, 2, 3, dtype=torch.bool)
    band[:, 1, 0] = True  # 3 of the 24 key cells
    layer = LayerAttention("l", "full3d", (2, 3), (20, 30), "frame", [0, 1, 2], [900, 100],
                           torch.zeros(2, 2, dtype=torch.long), probs, regs, torch.ones(2, 4, 2, 3, dtype=torch.bool),
                           torch.zeros(2, dtype=torch.bool))
    mass = band_mass(layer, band)
    torch.testing.assert_close(mass.inside + mass.outside + mass.registers, torch.ones(2, 3, 2))
    torch.testing.assert_close(mass.inside, probs[:, :, :, 1, 0].sum(-1))
    assert torch.allclose(mass.chance, torch.full((2,), 3 / 24))
    with pytest.raises(ValueError, match="does not match"):
        band_mass(layer, band[:, :2])
    assert Query(0, 1.0, 1.0).cell((20, 30), (2, 3)) == (0, 0)


def test_recovered_cameras_come_from_the_evaluation_and_errors_sum_to_its_numbers(tmp_path):
    from camvid.evaluation.layout import read_samples, write_sample
    from camvid.evaluation.pose_metrics import camera_errors
    from camvid.inspection.cameras import per_frame_errors, pick_sample, recovered_cameras

    rng = np.random.default_rng(0)
    T = 5
    gt = np.tile(np.eye(4), (T, 1, 1))
    gt[:, 0, 3] = np.linspace(0, 1, T)
    est = gt.copy()
    est[:, :3, 3] *= 3.0  # another scale: canonicalised away
    est[2, :3, 3] += rng.normal(size=3) * 0.1
    K = np.array([[30.0, 0, 16], [0, 30.0, 16], [0, 0, 1]])
    write_sample(tmp_path / "samples", "s0", np.zeros((T, 32, 32, 3), np.uint8), np.repeat(K[None], T, 0), gt,
                 caption="", seed=0)
    [record] = read_samples(tmp_path / "samples")
    errors = camera_errors(est, gt)
    trial = {"seed": 3, "success": True, "registered": T, "reason": "", **errors, "c2w": est.tolist()}
    results = {"details": {"camera": {"per_video": [{"sample_id": "s0", "trials": [trial]}]}}}
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "results.json").write_text(json.dumps(results))
    rec = recovered_cameras(record, tmp_path / "eval")
    assert rec.seed == 3 and rec.source == "evaluation results.json" and np.allclose(rec.c2w, est)
    per_frame = per_frame_errors(rec.c2w, record.c2w)
    for name, value in errors.items():
        assert per_frame[name].sum() == pytest.approx(value)
    assert per_frame["TransErr"][0] == 0 and per_frame["TransErr"][2] > 0
    with pytest.raises(ValueError, match="no gt.mp4"):
        recovered_cameras(record, tmp_path / "eval", kind="gt")
    # the notebook's default sample: the first one whose generated video SfM recovered
    write_sample(tmp_path / "samples", "a0", np.zeros((T, 32, 32, 3), np.uint8), np.repeat(K[None], T, 0), gt,
                 caption="", seed=0)
    records = read_samples(tmp_path / "samples")
    assert [r.sample_id for r in records] == ["a0", "s0"]
    assert pick_sample(records, results).sample_id == "s0" and pick_sample(records, None).sample_id == "a0"


def test_load_released_composes_the_sample_config_and_names_what_is_missing():
    from camvid.inspection import load_released

    with pytest.raises(ValueError, match="need model="):
        load_released("backbone=tiny_dynamicrafter")
    with pytest.raises(ValueError, match="give pretrained=PATH"):
        load_released(["model=cami2v", "backbone=tiny_dynamicrafter"], conf_dir=REPO / "conf")
    with pytest.raises(FileNotFoundError, match="pretrained weights not found"):
        load_released(["model=cami2v", "backbone=tiny_dynamicrafter", f"pretrained={REPO / 'no.ckpt'}"])


def test_band_options_are_the_runs_mask_settings():
    from omegaconf import OmegaConf

    from camvid.inspection import band_options, band_rows

    cfg = OmegaConf.create({"attn": {"name": "cross_video", "threshold": None, "tau": 2.0, "grid": "camvid",
                                     "path": "auto", "band": "soft"}})
    assert band_options(cfg) == {"tau": 2.0, "grid": "camvid"}
    K, c2w = _clip_cameras()
    with pytest.raises(ValueError, match="unknown band option"):
        band_rows(K, c2w, (48, 64), (6, 8), "epipolar", [], path="dense")
