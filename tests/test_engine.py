"""The training engine: learning is real, a killed run resumes exactly, bad runs stop clearly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from sslaug.engine.pretrain import main as pretrain_main
from sslaug.evaluate.linear import main as linear_main
from sslaug.io import atomic_torch_save
from sslaug.models.backbones import build_backbone, encoder_state
from sslaug.plan import PretrainRun, run_spec

from conftest import ROOT

MINI = yaml.safe_load((ROOT / "config" / "scales" / "mini.yaml").read_text())
LINEAR = {"epochs": 30, "batch_size": 256, "lr": 0.5, "augment": False, "standardize": True}


def spec_for(method: str, epochs: int, seed: int = 0, **train) -> dict:
    run = PretrainRun(method, "standard", (), "tiny", "mini", epochs, seed)
    spec = run_spec(run, "mini", MINI)
    spec["train"] = {**spec["train"], **train}
    return spec


def linear_top1(encoder: Path, data: Path, out: Path) -> float:
    assert linear_main(["--encoder", str(encoder), "--data", str(data), "--spec", json.dumps(LINEAR), "--out", str(out)]) == 0
    return json.loads(out.read_text())["metrics"]["top1"]


def test_ssl_pretraining_beats_random_init_on_linear_probe(mini_dataset: Path, tmp_path: Path) -> None:
    """Learning is real: SimCLR's frozen features classify the mini shapes clearly better."""
    spec = spec_for("simclr", epochs=6)
    encoder = tmp_path / "simclr.pt"
    assert pretrain_main(["--spec", json.dumps(spec), "--data", str(mini_dataset), "--run-dir", str(tmp_path / "run"), "--out", str(encoder), "--threads", "1"]) == 0
    torch.manual_seed(0)
    random_encoder = tmp_path / "random.pt"
    atomic_torch_save(encoder_state(build_backbone("tiny"), "tiny", 32, {}), random_encoder)
    pretrained = linear_top1(encoder, mini_dataset, tmp_path / "a.json")
    random_init = linear_top1(random_encoder, mini_dataset, tmp_path / "b.json")
    print(f"linear probe top-1: SimCLR {pretrained:.1f} vs random init {random_init:.1f}")
    assert pretrained >= random_init + 8.0
    # The run's records: per-step metrics and TensorBoard events.
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss") and len(rows) > 5
    assert list((tmp_path / "run" / "tensorboard").glob("events.*"))


def _pretrain_command(spec: dict, data: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "sslaug.engine.pretrain", "--spec", json.dumps(spec), "--data", str(data),
            "--run-dir", str(run_dir), "--out", str(run_dir / "encoder.pt"), "--threads", "1"]


def test_killed_pretrain_resumes_from_checkpoint_and_matches_uninterrupted(small_mini: Path, tmp_path: Path) -> None:
    """SIGKILL mid-run, rerun: resumes from checkpoint.pt and ends with the same weights."""
    spec = spec_for("byol", epochs=10, batch_size=32, checkpoint_every_steps=5, log_every_steps=1)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    killed = tmp_path / "killed"
    process = subprocess.Popen(_pretrain_command(spec, small_mini, killed), env=env, stderr=subprocess.PIPE, text=True)
    checkpoint = killed / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)  # mid-run: just past the first checkpoint, long before the end
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run was killed before it finished"
    assert not (killed / "encoder.pt").exists()
    step_at_kill = torch.load(checkpoint, weights_only=False)["step"]
    assert 0 < step_at_kill < 70

    resumed = subprocess.run(_pretrain_command(spec, small_mini, killed), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {checkpoint} at step {step_at_kill}" in resumed.stderr

    straight = tmp_path / "straight"
    done = subprocess.run(_pretrain_command(spec, small_mini, straight), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    a = torch.load(killed / "encoder.pt", weights_only=False)["state_dict"]
    b = torch.load(straight / "encoder.pt", weights_only=False)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    steps = [int(r.split(",")[0]) for r in (killed / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps)), "metrics.csv has no duplicated steps after resume"


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(small_mini: Path, tmp_path: Path, caplog) -> None:
    spec = spec_for("simclr", epochs=2, batch_size=32, checkpoint_every_steps=2, log_every_steps=1)
    run_dir = tmp_path / "run"
    assert pretrain_main(["--spec", json.dumps(spec), "--data", str(small_mini), "--run-dir", str(run_dir), "--out", str(run_dir / "encoder.pt")]) == 0
    good = (run_dir / "checkpoint.pt").read_bytes()
    spec["epochs"] = 3  # continue the same run with an exploding learning rate
    spec["train"]["base_lr"] = 1e30
    (run_dir / "encoder.pt").unlink()
    code = pretrain_main(["--spec", json.dumps(spec), "--data", str(small_mini), "--run-dir", str(run_dir), "--out", str(run_dir / "encoder.pt")])
    assert code == 1
    assert "NonFiniteLossError" in caplog.text and "NaN/inf" in caplog.text
    assert not (run_dir / "encoder.pt").exists()
    assert (run_dir / "checkpoint.stale.pt").read_bytes() == good, "the earlier checkpoint is kept"


def test_unknown_train_setting_is_named(small_mini: Path, tmp_path: Path, caplog) -> None:
    spec = spec_for("simclr", epochs=1, batch_size=32)
    spec["train"]["learning_rate"] = 0.1
    code = pretrain_main(["--spec", json.dumps(spec), "--data", str(small_mini), "--run-dir", str(tmp_path), "--out", str(tmp_path / "e.pt")])
    assert code == 1 and "learning_rate" in caplog.text


@pytest.mark.parametrize("method", ["simclr", "byol", "mocov2", "mocov3", "simsiam", "barlowtwins"])
def test_every_method_trains_and_its_loss_falls(method: str, small_mini: Path, tmp_path: Path) -> None:
    spec = spec_for(method, epochs=8, batch_size=32, log_every_steps=1, warmup_epochs=0)
    if method == "mocov2":
        spec["hparams"]["queue_size"] = 64
    run_dir = tmp_path / method
    assert pretrain_main(["--spec", json.dumps(spec), "--data", str(small_mini), "--run-dir", str(run_dir), "--out", str(run_dir / "encoder.pt")]) == 0
    losses = [float(r.split(",")[1]) for r in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    quarter = len(losses) // 4
    first, last = sum(losses[:quarter]) / quarter, sum(losses[-quarter:]) / quarter
    assert last < first, f"{method}: loss {first:.3f} -> {last:.3f}"


def test_gpu_requested_where_none_exists_is_refused(small_mini: Path, tmp_path: Path, caplog) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    spec = spec_for("simclr", epochs=1, batch_size=32)
    code = pretrain_main(["--spec", json.dumps(spec), "--data", str(small_mini), "--run-dir", str(tmp_path), "--out", str(tmp_path / "e.pt"), "--gpus", "4"])
    assert code == 1 and "asked for 4 GPU(s) but torch sees none" in caplog.text
    assert not (tmp_path / "e.pt").exists()


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    import errno

    path = tmp_path / "checkpoint.pt"
    atomic_torch_save({"step": 1}, path)

    def full_disk(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        atomic_torch_save({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"], "no temporary file left behind"


def test_missing_dataset_is_named(tmp_path: Path, caplog) -> None:
    spec = spec_for("simclr", epochs=1, batch_size=32)
    missing = tmp_path / "nowhere"
    code = pretrain_main(["--spec", json.dumps(spec), "--data", str(missing), "--run-dir", str(tmp_path / "r"), "--out", str(tmp_path / "e.pt")])
    assert code == 1 and f"{missing}/meta.json missing" in caplog.text


def test_pretrain_runs_under_torchrun_with_two_cpu_processes(small_mini: Path, tmp_path: Path) -> None:
    """The command the pretrain rule runs for a 2-GPU job, on CPU: DDP over gloo, one encoder."""
    spec = spec_for("simclr", epochs=1, batch_size=32)
    torchrun = Path(sys.executable).parent / "torchrun"
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", *_pretrain_command(spec, small_mini, tmp_path)[1:]]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "encoder.pt").exists() and (tmp_path / "checkpoint.pt").exists()
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(rows) > 1 and len(rows) == len(set(rows)), "one process writes the metrics"
