"""The benchmark scripts that cannot be timed here run end to end on tiny models, so that they are
known to work before the hardware they are meant for is available."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _llm_matmul_params(text: dict) -> int:
    """Weights of the Llama decoder's matmuls (projections, MLP, lm_head), from its config."""
    hidden, inter, layers = text["hidden_size"], text["intermediate_size"], text["num_hidden_layers"]
    head = hidden // text["num_attention_heads"]
    kv = text["num_key_value_heads"] * head
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inter
    return layers * per_layer + hidden * text["vocab_size"]


@pytest.mark.slow
def test_gpu_script_runs_on_the_cpu_with_tiny_models(tmp_path):
    sys.path.insert(0, str(BENCH))
    from gpu import TINY_LLM

    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(BENCH / "gpu.py"), "--device", "cpu", "--tiny", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == result
    assert result["device"] == "cpu" and result["dtype"] == "bfloat16" and result["tiny"] is True
    peak = result["matmul_peak"]["tflops"]
    assert peak > 0

    mix = result["mixture"]
    assert sorted(mix) == ["1", "8"]
    # FLOPs are counted per batch: eight images cost exactly eight times one.
    assert mix["8"]["flops"] == 8 * mix["1"]["flops"] > 0
    for row in mix.values():
        assert row["images_per_s"] == pytest.approx(row["batch_size"] / row["seconds"])
        assert row["fraction_of_peak"] == pytest.approx(row["flops"] / row["seconds"] / 1e12 / peak)
        assert row["peak_memory_gib"] > 0
    assert "skipped" in result["original_vs_eagle_hf"]  # no original venv given

    gen = result["generation"]
    assert [r["batch_size"] for r in gen] == [1, 8]
    for row in gen:
        assert row["vision_calls_per_generate"] == 1
        assert row["tokens_per_s"] == pytest.approx(row["batch_size"] * row["new_tokens"] / row["total_s"], rel=0.02)

    train = result["training"]
    assert train["gradient_checkpointing"] is True
    assert train["tokens"] == train["batch_size"] * train["seq_len"]
    assert train["model_flops"] == 3 * train["forward_flops"]
    # The LLM alone costs 2 FLOPs per matmul weight per token; the experts add more on top.
    assert train["forward_flops"] > 2 * _llm_matmul_params(TINY_LLM) * train["tokens"]
    assert train["mfu_vs_measured_peak"] == pytest.approx(train["model_flops"] / train["seconds"] / 1e12 / peak)
    assert result["peak_memory_gib"] >= max(r["peak_memory_gib"] for r in gen)


def test_vision_readout_learns_colour_and_scores_held_out_pairs_apart(tmp_path):
    """The direct-supervision study: colour (one pixel's worth of evidence) is read off the token
    under an object within 50 steps, and the held-out pairs are scored as their own rows."""
    proc = subprocess.run([sys.executable, str(BENCH / "vision_readout.py"), "--data", str(tmp_path / "set"),
                           "--n-train", "300", "--steps", "50"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = result["rows"]
    assert [r["step"] for r in rows] == [50]
    assert rows[0]["colour_seen"] > 0.6  # chance is 0.2
    assert rows[0]["shape_held_out"] is not None and rows[0]["shape_seen"] is not None
    written = json.loads((tmp_path / "set" / "test.json").read_text())
    assert any(r["combo"] == "held_out" for r in written)


def test_forward_flops_counts_the_cpu_attention_kernel():
    """FlopCounterMode alone counts 0 for the CPU kernel SDPA dispatches to; the benchmarks' counter
    must give the textbook count: 2*B*H*L*S*E for Q @ K^T plus 2*B*H*L*S*Ev for the weighted sum."""
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(BENCH))
    from _common import forward_flops

    b, h, L, S, e = 2, 3, 40, 24, 8
    q, k, v = torch.randn(b, h, L, e), torch.randn(b, h, S, e), torch.randn(b, h, S, e)
    mask = torch.randn(b, h, L, S)
    weight = torch.randn(5, e)
    with torch.inference_mode():
        flops = forward_flops(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask) @ weight.T)
    assert flops == 4 * b * h * L * S * e + 2 * b * h * L * e * 5


def test_expert_peak_reports_every_expert_against_the_same_run_peak(tmp_path):
    out = tmp_path / "peak.json"
    proc = subprocess.run([sys.executable, str(BENCH / "expert_peak.py"), "--preset", "tiny", "--peak-n", "128",
                           "--repeats", "1", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    from eagle_hf import vision_preset

    rows = result["rows"]
    assert [r["expert"] for r in rows] == [*vision_preset("tiny").expert_order, "whole tower"]
    peak = max(result["peak_tflops"].values())
    for row in rows:
        assert row["gflop"] > 0 and row["seconds"] > 0
        assert row["fraction_of_peak"] == pytest.approx(row["gflop"] / 1e3 / row["seconds"] / peak)
    # Channel concatenation adds no FLOPs: the tower's count is its experts' (resizes are not counted).
    assert rows[-1]["gflop"] == pytest.approx(sum(r["gflop"] for r in rows[:-1]), rel=1e-12)
    bad = subprocess.run([sys.executable, str(BENCH / "expert_peak.py"), "--preset", "tiny", "--experts", "nope"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--experts nope" in bad.stderr
