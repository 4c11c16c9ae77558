"""Killed processes leave the old folder or the complete new one, never a mix.

Each test starts a real process that saves (a model, a release, a conversion, a training
checkpoint), stops it with SIGKILL at a named moment (``EAGLE_HF_PAUSE_AT``, see
`eagle_hf.atomic.pause_point`, or a weight file cut in half by the child itself), then checks the
folder: byte-identical to the old save or to a complete new one, and temp folders gone after the
next run.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from eagle_hf import EagleVLForConditionalGeneration, preset_config
from eagle_hf.atomic import atomic_folder, remove_stale_temps
from eagle_hf.hub import check_release, save_release
from eagle_hf.testing import build_tiny_processor

ROOT = Path(__file__).resolve().parents[1]
REPO = "me/tiny"  # the card names it; the same in every save so that folders compare byte for byte

# The child builds the same tiny model as `_model(seed)` below and saves it.
_CHILD_COMMON = """
import sys, torch
import eagle_hf
from eagle_hf import EagleVLForConditionalGeneration, preset_config
from eagle_hf.testing import build_tiny_processor
config = preset_config("tiny", experts=["clip", "sam"])
torch.manual_seed(int(sys.argv[2]))
model = EagleVLForConditionalGeneration(config).eval()
processor = build_tiny_processor(config)
if "--half-weights" in sys.argv:
    # Simulate a kill half-way through writing the weights: write them, cut the file, stop.
    import transformers.modeling_utils as mu
    from eagle_hf.atomic import pause_point
    real = mu.safe_save_file
    def cut(tensors, filename, *a, **k):
        real(tensors, filename, *a, **k)
        with open(filename, "r+b") as f:
            f.truncate(f.seek(0, 2) // 2)
        pause_point("half-weights")
    mu.safe_save_file = cut
if "--no-exchange" in sys.argv:
    import eagle_hf.atomic
    eagle_hf.atomic._exchange = lambda a, b: False
"""
_SAVE_MODEL = _CHILD_COMMON + "model.save_pretrained(sys.argv[1])\n"
_SAVE_RELEASE = _CHILD_COMMON + "from eagle_hf.hub import save_release\nsave_release(model, processor, sys.argv[1], repo_id=\"me/tiny\")\n"


def _model(seed: int):
    config = preset_config("tiny", experts=["clip", "sam"])
    torch.manual_seed(seed)
    return EagleVLForConditionalGeneration(config).eval(), build_tiny_processor(config)


def _snapshot(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file (hidden ones included)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _temps(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}."))


def kill_at(point: str, args: list[str], tmp_path: Path, script: str | None = None, timeout: float = 300,
            env: dict | None = None) -> None:
    """Run ``python -c script *args`` (or ``python -m eagle_hf.cli *args``) until it reaches the
    pause point ``point``, then SIGKILL it. Fails if it ends without reaching the point."""
    marker = tmp_path / f"reached-{point}"
    marker.unlink(missing_ok=True)
    full_env = {**os.environ, "EAGLE_HF_PAUSE_AT": point, "EAGLE_HF_PAUSE_FILE": str(marker),
                "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-c", textwrap.dedent(script), *args] if script else \
        [sys.executable, "-m", "eagle_hf.cli", *args]
    proc = subprocess.Popen(cmd, env=full_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the child ended (rc {proc.returncode}) before {point}:\n"
                                 + proc.stdout.read().decode(errors="replace")[-3000:])
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the child did not reach {point} in {timeout} s")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL


# ----------------------------------------------------------------------------------------------
# save_pretrained and save_release


@pytest.fixture(scope="module")
def saves(tmp_path_factory):
    """Reference folders saved without a kill: the old (seed 0) and new (seed 1) model and release,
    each next to an extra file that a save into the folder must keep."""
    root = tmp_path_factory.mktemp("refs")
    out = {}
    for seed in (0, 1):
        model, processor = _model(seed)
        folder = root / f"model-{seed}"
        folder.mkdir()
        (folder / "notes.txt").write_text("kept")
        model.save_pretrained(folder)
        out["model", seed] = _snapshot(folder)
        folder = root / f"release-{seed}"
        folder.mkdir()
        (folder / "notes.txt").write_text("kept")
        save_release(model, processor, folder, repo_id=REPO)
        out["release", seed] = _snapshot(folder)
    assert out["model", 0] != out["model", 1] and out["release", 0] != out["release", 1]
    return out


def _old_folder(tmp_path: Path, kind: str) -> Path:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "notes.txt").write_text("kept")
    model, processor = _model(0)
    model.save_pretrained(dest) if kind == "model" else save_release(model, processor, dest, repo_id=REPO)
    return dest


@pytest.mark.parametrize("kind,point,flags", [
    ("model", "half-weights", ["--half-weights"]),
    ("model", "before-publish", []),
    ("model", "after-publish", []),
    ("model", "between-renames", ["--no-exchange"]),
    ("release", "release-model-saved", []),
    ("release", "before-publish", []),
    ("release", "after-publish", []),
])
def test_killed_save_leaves_old_or_new_folder(saves, tmp_path, kind, point, flags):
    dest = _old_folder(tmp_path, kind)
    assert _snapshot(dest) == saves[kind, 0]
    script = _SAVE_MODEL if kind == "model" else _SAVE_RELEASE
    kill_at(point, [str(dest), "1", *flags], tmp_path, script=script)

    # Right after the kill: the old folder or the complete new one (the fallback publish, without
    # an atomic exchange, may have moved the old one aside: the next run moves it back).
    if point == "between-renames":
        assert not dest.exists()
        remove_stale_temps(dest)
    expected_new = point == "after-publish"
    assert _snapshot(dest) == saves[kind, 1 if expected_new else 0]
    if kind == "release":
        assert check_release(dest) == []

    # The next save removes the killed run's temp folders and publishes its own.
    assert _temps(dest) or point in ("between-renames",)
    model, processor = _model(1)
    model.save_pretrained(dest) if kind == "model" else save_release(model, processor, dest, repo_id=REPO)
    assert _temps(dest) == []
    assert _snapshot(dest) == saves[kind, 1]


def test_save_keeps_a_live_process_temp_folder(tmp_path):
    """Only temp folders of processes that no longer run are removed."""
    dest = tmp_path / "dest"
    live = tmp_path / f".dest.eagle-tmp-{os.getppid()}-00000000"
    live.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".dest.eagle-tmp-{dead.pid}-00000000"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"x" * 10)
    assert remove_stale_temps(dest) == [stale]
    assert live.is_dir() and not stale.exists()


def test_a_rank_that_does_not_save_leaves_the_folder_alone(saves, tmp_path):
    """``save_pretrained(is_main_process=False)`` on the other ranks of a distributed run must not
    publish its (empty) temp folder over the main rank's save."""
    dest = _old_folder(tmp_path, "model")
    _model(1)[0].save_pretrained(dest, is_main_process=False)
    assert _snapshot(dest) == saves["model", 0] and _temps(dest) == []


def test_failed_write_leaves_the_old_folder(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "a.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_folder(dest) as tmp:
        (tmp / "a.txt").write_text("new")
        raise RuntimeError("boom")
    assert (dest / "a.txt").read_text() == "old" and _temps(dest) == []


# ----------------------------------------------------------------------------------------------
# eagle-hf convert


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    from eagle_hf.testing.parity import build_original_checkpoint, find_parity_dir, list_fixtures

    parity = find_parity_dir()
    if parity is None:
        pytest.skip("shared/parity not found (set EAGLE_HF_SHARED_DIR)")
    small = min(list_fixtures(parity), key=lambda p: json.loads(p.read_text())["manifest"]["state_dict"]["num_elements"])
    return build_original_checkpoint(small, tmp_path_factory.mktemp("orig") / "orig",
                                     fill=lambda name, shape, dtype: torch.zeros(shape, dtype=dtype),
                                     dtype=torch.bfloat16)


@pytest.mark.parametrize("point", ["convert-shard-written", "before-publish"])
def test_killed_convert_leaves_old_folder_and_next_run_cleans_up(original, tmp_path, point):
    dest = tmp_path / "native"
    args = ["convert", str(original), str(dest), "--no-progress", "--max-shard-size", "100MB"]
    from eagle_hf.cli import main

    assert main(args) == 0
    first = _snapshot(dest)
    kill_at(point, [*args, "--overwrite"], tmp_path)
    assert _snapshot(dest) == first
    assert len(_temps(dest)) == 1  # the killed run's temp folder, up to the model's size
    assert main([*args, "--overwrite"]) == 0
    assert _temps(dest) == [] and _snapshot(dest) == first


# ----------------------------------------------------------------------------------------------
# eagle-hf train


def test_train_resumes_from_the_last_complete_checkpoint(tmp_path):
    from eagle_hf.training.synthetic import make_synthetic_vqa

    data = make_synthetic_vqa(tmp_path / "data", n_train=16, n_test=1, seed=0)
    out = tmp_path / "run"
    args = ["train", "--data", str(data["train"]), "--image-folder", str(data["image_folder"]), "--model", "tiny",
            "--output-dir", str(out), "--max-steps", "4", "--save-steps", "2", "--batch-size", "4",
            "--logging-steps", "1"]
    # Killed while writing checkpoint-4 (weights written, optimizer and trainer state not yet).
    kill_at("checkpoint-weights-saved", args, tmp_path, env={"EAGLE_HF_PAUSE_SKIP": "1"})
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()
    assert (out / "checkpoint-4").is_dir() and not (out / "checkpoint-4" / "trainer_state.json").exists()

    result = subprocess.run([sys.executable, "-m", "eagle_hf.cli", *args], cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"skipping incomplete checkpoint {out / 'checkpoint-4'}" in result.stderr
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed_from"] == str(out / "checkpoint-2")
    assert summary["steps"] == 4
    assert (out / "checkpoint-4" / "trainer_state.json").is_file()
