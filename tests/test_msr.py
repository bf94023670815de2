"""MSR: the beta schedule, the four-term loss, multi-stage views, who sees which view, training."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT
from kornia.color import rgb_to_grayscale

from sslaug.augment.views import IMAGENET_MEAN, IMAGENET_STD, MSR_RECIPE, NAMED_RECIPES, MultiStagePipeline, recipe_for
from sslaug.engine.pretrain import build_view_maker
from sslaug.engine.pretrain import main as pretrain_main
from sslaug.methods import build_method
from sslaug.methods.losses import msr_beta, msr_loss
from sslaug.methods.msr import BYOLMSR, SimSiamMSR
from sslaug.models.backbones import build_backbone
from sslaug.plan import PretrainRun, build_plan, run_spec

torch.set_num_threads(1)
MINI = yaml.safe_load((ROOT / "config" / "scales" / "mini.yaml").read_text())
TABLES = yaml.safe_load((ROOT / "config" / "tables.yaml").read_text())["tables"]
HPARAMS = {"proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 32, "momentum_base": 0.99}


def unnormalize(view: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return view * std + mean


# ------------------------------------------------------------------ beta and loss
def test_beta_follows_the_cosine_schedule_or_stays_fixed() -> None:
    assert msr_beta(0.4, 0.0) == pytest.approx(0.4)
    assert msr_beta(0.4, 0.5) == pytest.approx(0.2)
    assert msr_beta(0.4, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert msr_beta(0.3, 0.25, "cosine") == pytest.approx(0.3 * (math.cos(math.pi / 4) + 1) / 2)
    steps = [msr_beta(0.5, k / 10) for k in range(11)]
    assert all(a > b for a, b in itertools.pairwise(steps)), "cosine beta decreases monotonically"
    assert {msr_beta(0.5, p, "fixed") for p in (0.0, 0.3, 0.99)} == {0.5}
    with pytest.raises(ValueError, match="beta_schedule"):
        msr_beta(0.5, 0.1, "linear")


def test_loss_equals_the_hand_computed_value() -> None:
    q1 = torch.tensor([[1.0, 0.0]], requires_grad=True)
    q2 = torch.tensor([[0.0, 2.0]], requires_grad=True)  # norms do not matter: 2 - 2 cos
    z1 = torch.tensor([[3.0, 0.0]], requires_grad=True)
    z2 = torch.tensor([[1.0, 1.0]], requires_grad=True)
    beta = 0.25
    # side 1: beta * (2 - 2 cos(q1, q2)) + (1 - beta) * (2 - 2 cos(q1, z2)) = 0.25 * 2 + 0.75 * (2 - sqrt 2)
    # side 2: beta * (2 - 2 cos(q2, q1)) + (1 - beta) * (2 - 2 cos(q2, z1)) = 0.25 * 2 + 0.75 * 2
    expected = 0.5 + 0.75 * (2 - math.sqrt(2)) + 2.0
    loss = msr_loss(q1, q2, z1, z2, beta)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert z1.grad is None and z2.grad is None, "targets are stop-gradient"


def test_aggressive_pair_term_uses_the_detached_other_prediction() -> None:
    """With beta = 1 only the aggressive-aggressive terms remain; each side's gradient
    reaches only its own prediction (the other one is a constant target)."""
    torch.manual_seed(0)
    q1 = torch.randn(4, 8, requires_grad=True)
    q2 = torch.randn(4, 8, requires_grad=True)
    z = torch.randn(4, 8)
    msr_loss(q1, q2, z, z, beta=1.0).backward()
    reference_q1 = q1.detach().clone().requires_grad_()
    (2 - 2 * torch.cosine_similarity(reference_q1, q2.detach(), dim=-1)).mean().backward()
    assert torch.allclose(q1.grad, reference_q1.grad, atol=1e-6)
    # beta = 0: plain BYOL onto the weak targets
    a = msr_loss(q1, q2, z, 2 * z, beta=0.0)
    b = sum((2 - 2 * torch.cosine_similarity(q, z, dim=-1)).mean() for q in (q1, q2))
    assert a.item() == pytest.approx(b.item(), abs=1e-6)


# ------------------------------------------------------------------ multi-stage views
def test_named_recipes_match_the_notes() -> None:
    aggressive, weak = NAMED_RECIPES["aggressive_weak"]
    assert aggressive == NAMED_RECIPES["aggressive"][0] == MSR_RECIPE
    assert MSR_RECIPE.crop_scale == (0.2, 1.0) and MSR_RECIPE.flip_p == 0.5
    assert MSR_RECIPE.jitter == (0.4, 0.4, 0.4, 0.1) and MSR_RECIPE.jitter_p == 0.8
    assert (MSR_RECIPE.grayscale_p, MSR_RECIPE.blur_p, MSR_RECIPE.solarize_p) == (0.2, 0.5, 0.0)
    assert weak.crop_scale == (0.2, 1.0)
    assert (weak.jitter_p, weak.grayscale_p, weak.blur_p, weak.solarize_p) == (0, 0, 0, 0)
    # A method's scale-level view tweaks (no blur at 32 px) do not reach MSR's named recipes.
    assert recipe_for("byol", {"blur_p": 0.0}, recipe="aggressive_weak") == NAMED_RECIPES["aggressive_weak"]


def test_aggressive_view_is_the_weak_crop_further_transformed() -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8)
    identity = MultiStagePipeline(replace(MSR_RECIPE, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0), 32)
    weak, aggressive = identity(images)
    assert weak.shape == aggressive.shape == (6, 3, 32, 32)
    assert torch.equal(weak, aggressive), "with t2 switched off the aggressive view is the weak view"
    gray = MultiStagePipeline(replace(MSR_RECIPE, jitter_p=0.0, grayscale_p=1.0, blur_p=0.0), 32)
    weak, aggressive = gray(images)
    expected = rgb_to_grayscale(unnormalize(weak)).expand(-1, 3, -1, -1)
    assert torch.allclose(unnormalize(aggressive), expected, atol=1e-5), "aggressive = grayscale(same crop)"
    assert not torch.allclose(weak, aggressive)


def test_view_maker_gives_weak_and_aggressive_of_each_image() -> None:
    spec = run_spec(PretrainRun("byol", "msr", (("beta_base", 0.3),), "tiny", "mini", 1, 0), "mini", MINI)
    maker = build_view_maker(spec, 8, None, None, torch.device("cpu"))
    torch.manual_seed(0)
    views = maker(torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8), torch.arange(5), 0)
    assert len(views) == 4 and all(v.shape == (5, 3, 32, 32) for v in views)
    assert not torch.equal(views[0], views[2]), "the two images' crops differ"


# ------------------------------------------------------------------ who sees which view
def _views(n: int = 6) -> list[torch.Tensor]:
    torch.manual_seed(1)
    return [torch.randn(n, 3, 32, 32) for _ in range(4)]  # weak1, aggressive1, weak2, aggressive2


def _spy(module: torch.nn.Module, seen: list) -> None:
    module.register_forward_pre_hook(lambda _, args: seen.append((args[0], torch.is_grad_enabled())))


def test_byol_msr_online_sees_only_aggressive_and_target_only_weak_views() -> None:
    method = build_method("byol", build_backbone("tiny"), HPARAMS, "msr", {"beta_base": 0.4})
    assert isinstance(method, BYOLMSR) and method.num_views == 4
    online, target = [], []
    _spy(method.backbone, online)
    _spy(method.target_backbone, target)
    weak1, aggressive1, weak2, aggressive2 = views = _views()
    loss, logs = method(views, progress=0.5)
    assert [id(x) for x, _ in online] == [id(aggressive1), id(aggressive2)]
    assert [id(x) for x, _ in target] == [id(weak1), id(weak2)]
    assert not any(grad for _, grad in target), "the target network runs without gradients"
    assert logs["beta"].item() == pytest.approx(0.2)
    loss.backward()
    assert all(p.grad is None for p in method.target_backbone.parameters())


def test_simsiam_msr_online_sees_only_aggressive_and_target_only_weak_views() -> None:
    hparams = {"proj_hidden_dim": 32, "proj_dim": 32, "pred_hidden_dim": 8}
    method = build_method(
        "simsiam", build_backbone("tiny"), hparams, "msr", {"beta_base": 0.3, "beta_schedule": "fixed"}
    )
    assert isinstance(method, SimSiamMSR)
    seen, predicted = [], []
    _spy(method.backbone, seen)
    _spy(method.predictor, predicted)
    weak1, aggressive1, weak2, aggressive2 = views = _views()
    _, logs = method(views, progress=0.9)
    with_grad = [id(x) for x, grad in seen if grad]
    without_grad = [id(x) for x, grad in seen if not grad]
    assert with_grad == [id(aggressive1), id(aggressive2)], "online (predictor) branch: aggressive views only"
    assert without_grad == [id(weak1), id(weak2)], "stop-gradient target branch: weak views only"
    assert len(predicted) == 2 and logs["beta"].item() == pytest.approx(0.3)


def test_msr_needs_beta_base_and_a_known_schedule() -> None:
    with pytest.raises(KeyError, match="beta_base"):
        build_method("byol", build_backbone("tiny"), HPARAMS, "msr", {})
    with pytest.raises(ValueError, match="beta_schedule"):
        build_method("byol", build_backbone("tiny"), HPARAMS, "msr", {"beta_base": 0.3, "beta_schedule": "step"})
    with pytest.raises(NotImplementedError, match="BYOL and SimSiam"):
        build_method(
            "simclr",
            build_backbone("tiny"),
            {"proj_hidden_dim": 8, "proj_dim": 8, "temperature": 0.2},
            "msr",
            {"beta_base": 0.3},
        )


# ------------------------------------------------------------------ plan and training
def test_every_msr_cell_is_implemented_at_every_scale() -> None:
    for name in ("mini", "cifar", "paper"):
        scale = yaml.safe_load((ROOT / "config" / "scales" / f"{name}.yaml").read_text())
        plan = build_plan({k: v for k, v in TABLES.items() if k.startswith("msr_")}, name, scale)
        gaps = {cell.gap_id for cells in plan.cells.values() for cell in cells if cell.runs[0].gaps}
        assert not gaps, f"{name}: {gaps}"
        msr = [r for r in plan.runs.values() if r.augmentation == "msr"]
        assert msr and {r.method for r in msr} == {"byol", "simsiam"}


def test_paper_scale_takes_msrs_optimisation_for_msr_and_its_byol_baselines() -> None:
    scale = yaml.safe_load((ROOT / "config" / "scales" / "paper.yaml").read_text())
    plan = build_plan({k: v for k, v in TABLES.items() if k.startswith("msr_")}, "paper", scale)

    def train_of(method: str, augmentation: str, dataset: str, epochs: int, recipe: str | None = None) -> dict:
        run = next(
            r
            for r in plan.runs.values()
            if (r.method, r.augmentation, r.dataset, r.epochs, r.recipe)
            == (method, augmentation, dataset, epochs, recipe)
        )
        return run_spec(run, "paper", scale)

    small = {"optimizer": "sgd", "base_lr": 0.1, "weight_decay": 5e-4, "batch_size": 256, "warmup_epochs": 0}
    for spec in (
        train_of("byol", "msr", "cifar100", 200),
        train_of("byol", "standard", "cifar100", 200, "aggressive"),
        train_of("byol", "standard", "stl10", 200, "aggressive_weak"),
        train_of("simsiam", "msr", "cifar100", 200),
    ):
        assert small.items() <= spec["train"].items(), spec["run"]
    assert train_of("byol", "msr", "cifar10", 200)["hparams"]["proj_dim"] == 128
    imagenet = {100: 0.9, 200: 0.6}
    for epochs, lr in imagenet.items():
        spec = train_of("byol", "msr", "imagenet", epochs)
        assert (spec["train"]["optimizer"], spec["train"]["base_lr"], spec["train"]["batch_size"]) == ("lars", lr, 2048)
        assert spec["hparams"]["momentum_base"] == 0.99 and spec["train"]["weight_decay"] == 1e-6


def _train(method: str, options: tuple, data: Path, run_dir: Path, epochs: int, **train) -> dict:
    augmentation = "msr" if "beta_base" in dict(options) else "standard"
    spec = run_spec(PretrainRun(method, augmentation, options, "tiny", "mini", epochs, 0), "mini", MINI)
    spec["train"] = {**spec["train"], "batch_size": 32, "log_every_steps": 1, "warmup_epochs": 0, **train}
    assert (
        pretrain_main(
            ["--spec", json.dumps(spec), "--data", str(data), "--run-dir", str(run_dir), "--out", str(run_dir / "e.pt")]
        )
        == 0
    )
    return spec


@pytest.mark.parametrize("method", ["byol", "simsiam"])
def test_msr_trains_and_its_loss_falls(method: str, small_mini: Path, tmp_path: Path) -> None:
    """A fixed beta keeps the objective stationary, so the total falls; under the cosine
    schedule the total can rise as weight moves to the larger weak term, while both terms fall."""
    _train(method, (("beta_base", 0.3), ("beta_schedule", "fixed")), small_mini, tmp_path, epochs=6)
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    quarter = (len(rows) - 1) // 4
    for name in ("loss", "loss_weak", "loss_aggressive"):
        values = [float(r.split(",")[header.index(name)]) for r in rows[1:]]
        first, last = sum(values[:quarter]) / quarter, sum(values[-quarter:]) / quarter
        assert last < first, f"{method} + MSR: {name} {first:.3f} -> {last:.3f}"
    assert {float(r.split(",")[header.index("beta")]) for r in rows[1:]} == {0.3}


def test_fix_pred_lr_keeps_the_predictor_lr_while_the_rest_decays(small_mini: Path, tmp_path: Path) -> None:
    spec = _train("simsiam", (("fix_pred_lr", True), ("recipe", "aggressive")), small_mini, tmp_path, epochs=2)
    groups = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["optimizer"]["param_groups"]
    peak = spec["train"]["base_lr"] * 32 / 256
    fixed = [g for g in groups if g.get("fix_lr")]
    decayed = [g for g in groups if not g.get("fix_lr")]
    assert fixed and decayed
    assert all(g["lr"] == pytest.approx(peak) for g in fixed)
    assert all(g["lr"] < 0.1 * peak for g in decayed), "the encoder and projector follow the cosine decay"
    method = build_method("simsiam", build_backbone("tiny"), spec["hparams"])
    assert sum(len(g["params"]) for g in fixed) == len(list(method.predictor.parameters()))
