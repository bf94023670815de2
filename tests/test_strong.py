"""Strong augmentation pool (CLSA / Rescue), the DDM loss, CLSA and Rescue training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT

from sslaug.augment.strong import CLSA_CROPS, OPS, POOL, StrongAugment, StrongConfig, op_value, scaled_crop_size
from sslaug.engine.pretrain import build_view_maker
from sslaug.engine.pretrain import main as pretrain_main
from sslaug.methods import build_method
from sslaug.methods.clsa import CLSA
from sslaug.methods.losses import ddm_loss
from sslaug.methods.rescue import Rescue, scaled_k, top_k_easiest
from sslaug.models.backbones import build_backbone
from sslaug.plan import PretrainRun, run_spec

torch.set_num_threads(1)
MINI = yaml.safe_load((ROOT / "config" / "scales" / "mini.yaml").read_text())
CLSA_SINGLE = {"crops": "single", "query": "weak", "key": "weak", "loss": "ddm"}


# ------------------------------------------------------------------ strong pool
def test_magnitudes_stay_in_the_papers_ranges() -> None:
    levels = torch.arange(1, 10)
    ones = torch.ones(9)
    expect = {  # (min, max) over levels 1..9, from the (max, bias) table of the notes
        "brightness": (0.14, 0.86), "color": (0.14, 0.86), "contrast": (0.14, 0.86), "sharpness": (0.14, 0.86),
        "posterize": (4, 7), "rotate": (3, 27), "solarize": (26, 231),
        "shear_x": (0.03, 0.27), "shear_y": (0.03, 0.27), "translate_x": (0.03, 0.27), "translate_y": (0.03, 0.27),
    }
    for name, (low, high) in expect.items():
        values = op_value(name, levels, ones)
        assert values.min().item() == pytest.approx(low, abs=1e-5), name
        assert values.max().item() == pytest.approx(high, abs=1e-5), name
        # Paper Table 1 ranges: factors within [0.05, 0.95], posterize [4, 8], solarize [0, 256], ...
    assert op_value("rotate", torch.tensor([9]), -torch.ones(1)).item() == pytest.approx(-27)
    params = StrongAugment(StrongConfig(num_ops=5)).sample(4000)
    assert params["level"].min() == 1 and params["level"].max() == 9
    assert set(params["op"].unique().tolist()) == set(range(len(OPS))) and len(OPS) == 14
    assert abs(params["apply"].float().mean().item() - 0.5) < 0.02
    assert set(params["sign"].unique().tolist()) == {-1.0, 1.0}


@pytest.mark.parametrize("name", OPS)
def test_each_op_keeps_shape_and_range_and_acts(name: str) -> None:
    torch.manual_seed(0)
    x = torch.rand(6, 3, 24, 20) * 0.8 + 0.1
    x[:, :, :4] = 0.0  # some structure for equalize / autocontrast
    value = op_value(name, torch.full((6,), 7), torch.ones(6))
    y = POOL[name][3](x, value)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0 and y.max() <= 1
    if name != "identity":
        assert not torch.allclose(y, x), f"{name} changed nothing"


def test_per_sample_params_differ_and_batch_is_grouped_by_op() -> None:
    torch.manual_seed(0)
    augment = StrongAugment(StrongConfig(num_ops=1, p=1.0))
    x = torch.rand(1, 3, 16, 16).expand(64, -1, -1, -1).contiguous()
    params = augment.sample(64)
    y = augment.apply(x, params)
    assert len(params["op"].unique()) > 5 and len(params["level"].unique()) > 3
    # each sample equals the op it drew applied alone: grouping by op changes nothing
    for i in (0, 17, 42):
        name = OPS[int(params["op"][i, 0])]
        value = op_value(name, params["level"][i], params["sign"][i])
        alone = POOL[name][3](x[i : i + 1], value).clamp(0, 1)
        torch.testing.assert_close(y[i : i + 1], alone)
    distinct = {tuple(y[i].flatten()[:50].tolist()) for i in range(64)}
    assert len(distinct) > 20


def test_strong_augment_is_deterministic_under_a_seed_and_cutout_greys_a_square() -> None:
    x = torch.rand(32, 3, 32, 32)
    augment = StrongAugment(StrongConfig(num_ops=2, cutout=0.5))
    torch.manual_seed(3)
    a = augment(x)
    torch.manual_seed(3)
    b = augment(x)
    torch.manual_seed(4)
    c = augment(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    grey = (a == 0.5).all(dim=1).flatten(1).sum(1)
    assert (grey >= 16 * 16 - 16).all(), "a 16x16 grey cutout in every image"
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1


def test_paper_pool_swaps_identity_for_invert() -> None:
    augment = StrongAugment(StrongConfig(num_ops=1, p=1.0, pool="paper"))
    assert "invert" in augment.ops and "identity" not in augment.ops and len(augment.ops) == 14
    x = torch.rand(4, 3, 8, 8)
    params = {"op": torch.full((4, 1), augment.ops.index("invert")), "level": torch.ones(4, 1, dtype=torch.long),
              "sign": torch.ones(4, 1), "apply": torch.ones(4, 1, dtype=torch.bool)}
    torch.testing.assert_close(augment.apply(x, params), 1 - x)
    with pytest.raises(ValueError, match="pool"):
        StrongAugment(StrongConfig(pool="other"))


def test_p_zero_is_identity() -> None:
    x = torch.rand(8, 3, 16, 16)
    assert torch.equal(StrongAugment(StrongConfig(p=0.0))(x), x)


# ------------------------------------------------------------------ CLSA
def test_ddm_loss_matches_hand_computed_value() -> None:
    # weak query [1, 0], strong query [0, 1]; candidates = [key [1, 0] ; queue [0, 1]], T = 1:
    # p_weak = (a, 1 - a), a = e / (1 + e); log p_strong = (-log(1 + e), 1 - log(1 + e))
    # DDM = -(a (-log(1 + e)) + (1 - a)(1 - log(1 + e))) = log(1 + e) - (1 - a) = 1.04432
    weak = torch.tensor([[2.0, 0.0]], requires_grad=True)  # normalised inside
    strong = torch.tensor([[0.0, 3.0]], requires_grad=True)
    keys = torch.tensor([[1.0, 0.0]], requires_grad=True)
    queue = torch.tensor([[0.0, 1.0]])
    loss = ddm_loss(weak, strong, keys, queue, temperature=1.0)
    a = math.e / (1 + math.e)
    assert loss.item() == pytest.approx(math.log(1 + math.e) - (1 - a), abs=1e-6)
    assert loss.item() == pytest.approx(1.04432, abs=1e-5)
    loss.backward()
    assert weak.grad is None and keys.grad is None, "the weak target and the keys are detached"
    assert strong.grad is not None and strong.grad.abs().sum() > 0
    # identical weak and strong queries: DDM = entropy of p_weak, and with T = 0.2 on a batch
    torch.manual_seed(0)
    q, k, qu = torch.randn(4, 8), torch.randn(4, 8), torch.randn(16, 8)
    cand = torch.nn.functional.normalize(torch.cat([k, qu]), dim=1)
    p = torch.softmax(torch.nn.functional.normalize(q, dim=1) @ cand.T / 0.2, dim=1)
    entropy = -(p * p.log()).sum(1).mean()
    assert ddm_loss(q, q, k, qu, 0.2).item() == pytest.approx(entropy.item(), rel=1e-5)


def _clsa_spec(options: dict, epochs: int = 1, **train) -> dict:
    run = PretrainRun("mocov2", "clsa", tuple(sorted(options.items())), "tiny", "mini", epochs, 0)
    spec = run_spec(run, "mini", MINI)
    spec["train"] = {**spec["train"], **train}
    return spec


@pytest.mark.parametrize(
    "options, sizes",
    [
        (CLSA_SINGLE, [32, 32, 14]),
        ({**CLSA_SINGLE, "crops": "multi"}, [32, 32, 32, 27, 23, 18, 14]),
        ({**CLSA_SINGLE, "query": "strong", "loss": "none"}, [14, 32]),
        ({**CLSA_SINGLE, "query": "strong", "key": "strong", "loss": "none"}, [14, 14]),
        ({**CLSA_SINGLE, "loss": "contrastive"}, [32, 32, 14]),
    ],
)
def test_clsa_views_follow_the_options(options: dict, sizes: list[int]) -> None:
    spec = _clsa_spec(options)
    assert spec["strong"]["augment"]["num_ops"] == 5 and spec["strong"]["ddm_weight"] == 1.0
    maker = build_view_maker(spec, 10, None, None, torch.device("cpu"))
    views = maker(torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8), torch.arange(8), 0)
    assert [v.shape[-1] for v in views] == sizes
    assert all(v.shape[:2] == (8, 3) for v in views)
    method = build_method("mocov2", build_backbone("tiny"), spec["hparams"], "clsa", {**spec["strong"], **options})
    assert isinstance(method, CLSA) and method.extra_loss == options["loss"]
    loss, logs = method(views, 0.0)
    assert torch.isfinite(loss) and set(logs) == {"loss", "loss_contrastive", "loss_strong"}
    if options["loss"] == "none":
        assert logs["loss_strong"].item() == 0.0
    assert [scaled_crop_size(c[0], 224) for c in CLSA_CROPS] == [224, 192, 160, 128, 96]


def test_clsa_enqueues_only_keys() -> None:
    spec = _clsa_spec({**CLSA_SINGLE, "crops": "multi"})
    hp = {**spec["hparams"], "queue_size": 64}
    method = build_method("mocov2", build_backbone("tiny"), hp, "clsa", {**spec["strong"], **CLSA_SINGLE})
    maker = build_view_maker(_clsa_spec({**CLSA_SINGLE, "crops": "multi"}), 10, None, None, torch.device("cpu"))
    views = maker(torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8), torch.arange(8), 0)
    method(views, 0.0)
    method.after_step(0.0)
    assert int(method.queue.pointer) == 8, "one key per image per step, no strong queries"


def _losses_fall(spec: dict, data: Path, run_dir: Path, skip: int = 0) -> tuple[float, float]:
    """Mean logged loss of the first and last quarter of the steps after the first ``skip``."""
    assert pretrain_main(["--spec", json.dumps(spec), "--data", str(data), "--run-dir", str(run_dir), "--out", str(run_dir / "encoder.pt")]) == 0
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss,")
    losses = [float(r.split(",")[1]) for r in rows[1 + skip :]]
    quarter = len(losses) // 4
    return sum(losses[:quarter]) / quarter, sum(losses[-quarter:]) / quarter


@pytest.mark.parametrize("crops, epochs", [("single", 8), ("multi", 4)])  # multi: 5 strong views a step
def test_clsa_trains_and_its_loss_falls(crops: str, epochs: int, small_mini: Path, tmp_path: Path) -> None:
    spec = _clsa_spec({**CLSA_SINGLE, "crops": crops}, epochs=epochs, batch_size=32, log_every_steps=1, warmup_epochs=0)
    spec["hparams"]["queue_size"] = 64
    # The first 2 steps (64 / 32) still see the random initial queue, an easy task; skip them.
    first, last = _losses_fall(spec, small_mini, tmp_path / crops, skip=2)
    assert last < first, f"CLSA-{crops}: loss {first:.3f} -> {last:.3f}"


# ------------------------------------------------------------------ Rescue
def test_top_k_picks_exactly_the_k_most_similar_pairs() -> None:
    torch.manual_seed(0)
    n, d = 64, 16
    z_a = torch.randn(n, d)
    noise = torch.randn(n, d)
    mix = torch.rand(n)  # pair i's z_b = z_a + mix_i * noise: similarity falls with mix_i (almost surely)
    z_b = z_a + mix[:, None] * noise * 3
    similarity = torch.nn.functional.cosine_similarity(z_a, z_b, dim=1)
    for k in (1, 5, 16, 64):
        chosen = top_k_easiest(z_a, z_b, k)
        assert len(chosen) == k and len(set(chosen.tolist())) == k
        expected = set(sorted(range(n), key=lambda i: -similarity[i].item())[:k])
        assert set(chosen.tolist()) == expected
        assert similarity[chosen].min() >= similarity[[i for i in range(n) if i not in expected] or [0]].max() or k == n
    # scale-invariant per pair: scaling one embedding does not change the choice
    assert torch.equal(top_k_easiest(z_a * 5, z_b, 5), top_k_easiest(z_a, z_b, 5))
    assert scaled_k(128, 128, 4096) == 4 and scaled_k(64, 512, 4096) == 8 and scaled_k(16, 128, 4096) == 2
    assert scaled_k(128, 4096, 4096) == 128 and scaled_k(300, 128, None) == 128


def _rescue_spec(method: str, k: int, s: float, epochs: int = 1, **train) -> dict:
    run = PretrainRun(method, "rescue", (("k", k), ("s", s)), "tiny", "mini", epochs, 0)
    spec = run_spec(run, "mini", MINI)
    spec["train"] = {**spec["train"], **train}
    return spec


@pytest.mark.parametrize("method", ["simclr", "mocov3"])
def test_rescue_adds_s_times_topk_loss_on_the_selected_strong_views(method: str) -> None:
    spec = _rescue_spec(method, k=1024, s=0.5)  # 1024 at batch 4096 -> 4 of 16
    assert spec["strong"]["augment"] == {"num_ops": 2, "p": 0.5, "max_level": 10, "cutout": 0.5}
    maker = build_view_maker(spec, 16, None, None, torch.device("cpu"))
    torch.manual_seed(0)
    views = maker(torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8), torch.arange(16), 0)
    assert len(views) == 3 and all(v.shape == (16, 3, 32, 32) for v in views)
    torch.manual_seed(0)
    wrapped = build_method(method, build_backbone("tiny"), spec["hparams"], "rescue", {**spec["strong"], **spec["options"]})
    assert isinstance(wrapped, Rescue) and wrapped.backbone is wrapped.base.backbone
    loss, logs = wrapped(views, 0.0)
    assert loss.item() == pytest.approx(logs["loss_ssl"].item() + 0.5 * logs["loss_topk"].item(), rel=1e-5)
    assert -1 <= logs["loss_topk"].item() <= 1
    loss.backward()
    assert wrapped.backbone.layer1[0].weight.grad is not None
    wrapped.after_step(0.0)


@pytest.mark.parametrize("method", ["simclr", "mocov3"])
def test_rescue_trains_and_its_loss_falls(method: str, small_mini: Path, tmp_path: Path) -> None:
    spec = _rescue_spec(method, k=128, s=0.75, epochs=8, batch_size=32, log_every_steps=1, warmup_epochs=0)
    first, last = _losses_fall(spec, small_mini, tmp_path / method)
    assert last < first, f"Rescue({method}): loss {first:.3f} -> {last:.3f}"


@pytest.mark.parametrize("scale_name", ["mini", "cifar", "paper"])
def test_every_clsa_and_rescue_run_of_every_scale_builds(scale_name: str) -> None:
    """The scale settings fit the methods (e.g. CLSA needs MoCo v2's asymmetric loss)."""
    from sslaug.plan import build_plan

    scale = yaml.safe_load((ROOT / "config" / "scales" / f"{scale_name}.yaml").read_text())
    tables = yaml.safe_load((ROOT / "config" / "tables.yaml").read_text())["tables"]
    built = set()
    for run in build_plan(tables, scale_name, scale).runs.values():
        key = (run.method, run.augmentation, run.options)
        if run.augmentation not in ("clsa", "rescue") or run.gaps or key in built:
            continue
        spec = run_spec(run, scale_name, scale)
        backbone = build_backbone("vit_mini" if run.method == "dinov2" else "tiny")  # small stand-ins; DINOv2 needs a ViT
        method = build_method(run.method, backbone, spec["hparams"], run.augmentation, {**spec["strong"], **spec["options"]})
        assert isinstance(method, CLSA if run.augmentation == "clsa" else Rescue)
        build_view_maker(spec, 10, None, None, torch.device("cpu"))
        built.add(key)
    assert len(built) >= 20
