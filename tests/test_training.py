"""Training: data and collator, stages and gradients, sampler, Trainer integration, CLI (CPU).

Multi-process tests (torchrun DDP / FSDP with gloo) are marked slow: run them with
``pytest -m slow tests/test_training.py`` or ``RUN_SLOW=1``.
"""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
from transformers.modeling_layers import GradientCheckpointingLayer

import eagle_hf  # noqa: F401
from eagle_hf.processing import IGNORE_INDEX
from eagle_hf.training import (
    STAGES,
    EagleDataCollator,
    LlavaDataset,
    LlavaIterableDataset,
    MalformedRowError,
    ModalityLengthGroupedSampler,
    StageLRs,
    TrainOptions,
    apply_stage,
    build_dataset,
    param_groups,
    parse_row,
    part_of,
    score,
    train,
)
from eagle_hf.training.sampler import modality_grouped_order
from eagle_hf.training.synthetic import get_generator, make_synthetic_vqa
from eagle_hf.training.tiny import build_tiny

@pytest.fixture(scope="module")
def vqa(tmp_path_factory):
    """A small synthetic VQA set: 48 training images (multi-turn rows), 6 test images."""
    root = tmp_path_factory.mktemp("vqa")
    return make_synthetic_vqa(root, n_train=48, n_test=6, seed=1, generator="grouped")


@pytest.fixture(scope="module")
def train_set(vqa):
    return LlavaDataset(json.loads(vqa["train"].read_text()), vqa["image_folder"])


@pytest.fixture(scope="module")
def tiny(train_set):
    """(model, processor) of the tiny preset with a tokenizer learnt from the training rows."""
    return build_tiny(train_set.examples, seed=0)


@pytest.fixture
def fresh_tiny(train_set):
    return build_tiny(train_set.examples, seed=0)


def _row(row_id="r", image="a.png", turns=None):
    row = {"id": row_id, "conversations": turns or [{"from": "human", "value": "<image>\nWhat is it?"},
                                                     {"from": "gpt", "value": "a circle"}]}
    if image is not None:
        row["image"] = image
    return row


@pytest.fixture
def image_dir(tmp_path):
    for name, size in (("a.png", (64, 64)), ("wide.png", (120, 40)), ("tall.png", (30, 90))):
        Image.new("RGB", size, (200, 30, 30)).save(tmp_path / name)
    return tmp_path


# ----------------------------------------------------------------------------------------------
# Data


def test_parse_row_moves_the_image_to_the_front_of_its_message(image_dir):
    ex = parse_row(_row(turns=[{"from": "human", "value": "What is <image> this?"}, {"from": "gpt", "value": "x"}]),
                   image_dir)
    assert ex.messages[0] == {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is  this?"}]}
    assert ex.images == [str(image_dir / "a.png")]


@pytest.mark.parametrize("row, message", [
    (_row(image="missing.png"), "image file not found"),
    (_row(turns=[{"from": "gpt", "value": "hello"}]), "turns must alternate"),
    (_row(turns=[{"from": "system", "value": "be brief"}]), "no human turn"),
    (_row(turns=[{"from": "human", "value": "<image>\nhi"}]), "no gpt turn"),
    (_row(turns=[{"from": "human", "value": "<image>\n<image>\nhi"}, {"from": "gpt", "value": "x"}]),
     "2 <image> placeholder(s) in the turns but 1 image"),
    (_row(turns=[{"from": "human", "value": "hi"}, {"from": "gpt", "value": "x"}]), "0 <image> placeholder"),
    (_row(image=None), "1 <image> placeholder(s) in the turns but 0 image"),
    (_row(turns=[{"from": "robot", "value": "hi"}]), "from 'robot'"),
    ({"id": "r"}, "no 'conversations' list"),
])
def test_malformed_rows_name_the_row(image_dir, row, message):
    with pytest.raises(MalformedRowError, match=r"^row 'r': ") as err:
        parse_row(row, image_dir)
    assert message in str(err.value)


def test_malformed_rows_can_be_skipped_and_counted(image_dir, caplog):
    rows = [_row("ok1"), _row("bad1", image="missing.png"), _row("ok2", image=None, turns=[
        {"from": "human", "value": "text only?"}, {"from": "gpt", "value": "yes"}]),
        _row("bad2", turns=[{"from": "human", "value": "<image>\nno answer"}])]
    with pytest.raises(MalformedRowError, match="bad1"):
        LlavaDataset(rows, image_dir)
    with caplog.at_level("WARNING"):
        ds = LlavaDataset(rows, image_dir, on_error="skip")
    assert [ex.id for ex in ds.examples] == ["ok1", "ok2"]
    assert ds.skipped == 2
    assert "bad1" in caplog.text and "bad2" in caplog.text


def test_json_jsonl_and_datasets_sources_agree(tmp_path, image_dir):
    datasets = pytest.importorskip("datasets")
    rows = [_row(f"r{i}") for i in range(5)] + [_row("t", image=None, turns=[
        {"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}])]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    from_json = build_dataset(tmp_path / "d.json", image_dir)
    from_jsonl = build_dataset(tmp_path / "d.jsonl", image_dir)
    hf = datasets.Dataset.from_list([{**r, "image": r.get("image")} for r in rows])
    from_hf = build_dataset(hf, image_dir)
    streamed = build_dataset(hf.to_iterable_dataset(), image_dir)
    assert isinstance(streamed, LlavaIterableDataset)
    ids = [ex.id for ex in from_json.examples]
    assert ids == [ex.id for ex in from_jsonl.examples] == [ex.id for ex in from_hf.examples]
    assert [item["id"] for item in streamed] == ids
    assert from_json[0]["images"][0].size == (64, 64) and from_json[5]["images"] == []
    hf.save_to_disk(str(tmp_path / "disk"))
    assert [ex.id for ex in build_dataset(tmp_path / "disk", image_dir).examples] == ids


def test_streamed_rows_are_checked_on_the_fly(image_dir):
    rows = iter([_row("ok"), _row("bad", image="missing.png"), _row("ok2")])
    stream = LlavaIterableDataset(rows, image_dir, on_error="skip")
    assert [item["id"] for item in stream] == ["ok", "ok2"] and stream.skipped == 1
    with pytest.raises(MalformedRowError, match="bad"):
        list(LlavaIterableDataset([_row("bad", image="missing.png")], image_dir))


# ----------------------------------------------------------------------------------------------
# Collator


def _supervised_text(processor, input_ids, labels) -> list[str]:
    return [processor.tokenizer.decode([int(i)]) for i, lab in zip(input_ids, labels) if lab != IGNORE_INDEX]


def test_collator_supervises_only_assistant_answers(tiny, train_set):
    model, processor = tiny
    collator = EagleDataCollator(processor)
    items = [train_set[0], train_set[1]]
    batch = collator(items)
    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    for row, item in enumerate(items):
        answers = [m["content"][-1]["text"] for m in item["messages"] if m["role"] == "assistant"]
        expected = [piece for a in answers for piece in (a, "<|im_end|>")]
        supervised = _supervised_text(processor, batch["input_ids"][row], batch["labels"][row])
        assert "".join(supervised) == "".join(expected)
        ids, labels, mask = batch["input_ids"][row], batch["labels"][row], batch["attention_mask"][row]
        assert (labels[ids == processor.image_token_id] == IGNORE_INDEX).all()
        assert (labels[mask == 0] == IGNORE_INDEX).all()
        assert (ids == processor.image_token_id).sum() == model.config.image_seq_length


def test_collator_mixes_text_only_rows_and_images_of_any_size(tiny, image_dir):
    _, processor = tiny
    rows = [_row("wide", image="wide.png"), _row("text", image=None, turns=[
        {"from": "human", "value": "How many objects are there?"}, {"from": "gpt", "value": "two"}]),
        _row("tall", image="tall.png")]
    ds = LlavaDataset(rows, image_dir)
    batch = EagleDataCollator(processor)([ds[0], ds[1], ds[2]])
    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    per_row = (batch["input_ids"] == processor.image_token_id).sum(1).tolist()
    assert per_row == [16, 0, 16]


def test_truncation_never_cuts_an_image(tiny, image_dir):
    model, processor = tiny
    long_answer = " ".join(["circle"] * 80)
    rows = [_row("long", turns=[{"from": "human", "value": "<image>\nSay it"}, {"from": "gpt", "value": long_answer}])]
    item = LlavaDataset(rows, image_dir)[0]
    full = EagleDataCollator(processor).encode(item)
    limit = len(full["input_ids"]) - 20
    cut = EagleDataCollator(processor, max_length=limit)([item])
    assert cut["input_ids"].shape[1] == limit
    assert (cut["input_ids"] == processor.image_token_id).sum() == 16
    assert (cut["labels"] != IGNORE_INDEX).sum() > 0
    # A budget that would end inside the image span: the row is refused, by id, or skipped.
    image_start = full["input_ids"].index(processor.image_token_id)
    with pytest.raises(MalformedRowError, match="row 'long'.*cut through image"):
        EagleDataCollator(processor, max_length=image_start + 5)([item])
    other = LlavaDataset([_row("text", image=None, turns=[{"from": "human", "value": "hi"},
                                                          {"from": "gpt", "value": "two"}])], image_dir)[0]
    budget = len(EagleDataCollator(processor).encode(other)["input_ids"])
    assert image_start < budget < image_start + 16  # fits the text row, ends inside the image
    skipping = EagleDataCollator(processor, max_length=budget, on_error="skip")
    batch = skipping([item, other])
    assert batch["input_ids"].shape[0] == 1 and "pixel_values" not in batch and skipping.skipped == 1


# ----------------------------------------------------------------------------------------------
# Sampler


def test_modality_grouped_order_keeps_modalities_apart():
    g = torch.Generator().manual_seed(0)
    lengths = [((i * 37) % 50 + 1) * (1 if i % 3 else -1) for i in range(103)]
    batch, world = 4, 2
    order = modality_grouped_order(lengths, batch, world, g)
    assert sorted(order) == list(range(103))
    mega = batch * world
    blocks = [order[s:s + mega] for s in range(0, len(order), mega)]
    # every megabatch but the final leftover one holds a single modality
    for block in blocks[:-2]:
        assert len({lengths[i] > 0 for i in block}) == 1, block
    # inside a megabatch, each rank's chunk gets comparable total length
    sampler = ModalityLengthGroupedSampler(lengths, batch, world, seed=3)
    assert list(sampler) == list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != list(ModalityLengthGroupedSampler(lengths, batch, world, seed=3))


def test_text_only_and_image_rows_have_signed_modality_lengths(train_set, image_dir):
    rows = [_row("img"), _row("txt", image=None, turns=[{"from": "human", "value": "a b c"},
                                                        {"from": "gpt", "value": "d"}])]
    lengths = LlavaDataset(rows, image_dir).modality_lengths
    assert lengths[0] > 128 and lengths[1] == -4


# ----------------------------------------------------------------------------------------------
# Stages and gradients


def _one_batch(processor, train_set, n=2):
    return EagleDataCollator(processor)([train_set[i] for i in range(n)])


def _grads_by_part(model) -> dict[str, dict[str, bool]]:
    """part -> {'trainable_with_grad', 'trainable_without_grad', 'frozen_with_grad'} flags."""
    seen = {}
    for name, p in model.named_parameters():
        part = "lora" if "lora_" in name else part_of(name)
        # LoRA's B starts at zero, so A's first gradient is exactly zero: present is all one can ask.
        has_grad = p.grad is not None and ("lora_A" in name or bool(p.grad.abs().sum() > 0))
        flags = seen.setdefault(part, Counter())
        flags[("trainable" if p.requires_grad else "frozen", has_grad)] += 1
    return seen


@pytest.mark.parametrize("stage, trained", [
    ("pretrain", {"projector"}),
    ("prealign", {"projector", "experts"}),
    ("finetune", {"projector", "experts", "llm"}),
    ("lora", {"projector", "lora"}),
    ("lora-experts", {"projector", "experts", "lora"}),
])
def test_stage_trains_exactly_its_parts(stage, trained, fresh_tiny, train_set):
    pytest.importorskip("peft")
    model, processor = fresh_tiny
    result = apply_stage(model, stage, StageLRs(1e-3, projector=2e-3, experts=5e-4))
    model = result.model
    model.train()
    model(**_one_batch(processor, train_set)).loss.backward()
    for part, flags in _grads_by_part(model).items():
        if part in trained:
            # every trainable tensor got a non-zero gradient, and there are trainable tensors
            assert flags[("trainable", False)] == 0, (stage, part, flags)
            assert flags[("trainable", True)] > 0, (stage, part, flags)
        else:
            assert flags[("trainable", True)] == flags[("trainable", False)] == 0, (stage, part, flags)
        assert flags[("frozen", True)] == 0, (stage, part, flags)
    lrs = {g["name"].split(".")[0]: g["lr"] for g in result.param_groups}
    expected = {"projector": 2e-3, "experts": 5e-4, "llm": 1e-3}
    assert lrs == {p: expected[p] for p in lrs}
    assert set(lrs) == {p if p != "lora" else "llm" for p in trained}


def test_experts_under_no_grad_are_caught(fresh_tiny, train_set, monkeypatch):
    """The classic pitfall: an expert run under torch.no_grad silently stops learning. The check
    used above must notice it."""
    model, processor = fresh_tiny
    apply_stage(model, "finetune", 1e-3)
    convnext = model.model.vision_tower.convnext
    original = type(convnext).forward

    def forward_no_grad(self, *args, **kwargs):
        with torch.no_grad():
            return original(self, *args, **kwargs)

    monkeypatch.setattr(type(convnext), "forward", forward_no_grad)
    model(**_one_batch(processor, train_set)).loss.backward()
    starved = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert starved and all(".convnext." in n for n in starved)
    assert all(p.grad is not None for n, p in model.named_parameters() if ".clip." in n and p.requires_grad)


def test_param_groups_follow_the_names_after_wrapping(fresh_tiny):
    model, _ = fresh_tiny
    apply_stage(model, "finetune", 1e-3)
    wrapper = torch.nn.Module()
    wrapper.module = model  # DDP-style prefix
    groups = param_groups(wrapper, StageLRs(1.0, projector=2.0, experts=3.0))
    assert {g["name"]: g["lr"] for g in groups} == {
        "experts": 3.0, "experts.no_decay": 3.0, "llm": 1.0, "llm.no_decay": 1.0,
        "projector": 2.0, "projector.no_decay": 2.0}
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())


def test_stage_table_is_consistent():
    assert {"pretrain", "finetune", "prealign", "lora", "qlora"} <= set(STAGES)
    with pytest.raises(ValueError, match="unknown stage"):
        apply_stage(torch.nn.Linear(2, 2), "stage3")


def test_gradient_checkpointing_reaches_the_experts(fresh_tiny, train_set):
    model, processor = fresh_tiny
    apply_stage(model, "finetune", 1e-3)
    batch = _one_batch(processor, train_set)
    model.train()
    model(**batch).loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    model.activation_checkpointing_enable()
    runs = Counter()

    def count(name):
        def hook(*_):
            runs[name] += 1
        return hook

    for name, module in model.named_modules():
        if isinstance(module, GradientCheckpointingLayer):
            # transformers checkpoints `forward` with module hooks outside: count the replays
            inner = module._gradient_checkpointing_func
            module._gradient_checkpointing_func = (
                lambda fn, *a, _inner=inner, _hook=count(name), **k: _inner(lambda *x, **y: (_hook(), fn(*x, **y))[1], *a, **k))
        elif type(module).__name__ == "ConvNeXtBlock":  # timm checkpoints the whole block
            module.mlp.register_forward_hook(count(name))
    model(**batch).loss.backward()
    # every checkpointed block runs twice: forward, then again in backward
    by_kind = {}
    for name, n in runs.items():
        by_kind.setdefault(name.split(".")[2] if "vision_tower" in name else "llm", set()).add(n)
    assert by_kind == {"clip": {2}, "convnext": {2}, "llm": {2}}, runs
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, reference[n], rtol=1e-4, atol=1e-6, msg=n)


# ----------------------------------------------------------------------------------------------
# Trainer integration (the code path of `eagle-hf train`)


def _options(vqa, out, **kw):
    base = dict(data=str(vqa["train"]), image_folder=str(vqa["image_folder"]), model="tiny", output_dir=str(out),
                batch_size=4, max_steps=6, logging_steps=1, save_steps=3, learning_rate=2e-3, progress=False,
                warmup=0, seed=0)
    return TrainOptions(**{**base, **kw})


def _weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


class _CrashAfter(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            raise KeyboardInterrupt("simulated kill")


def test_resume_after_a_kill_reaches_the_same_weights(vqa, tmp_path):
    straight = train(_options(vqa, tmp_path / "straight", resume=False))
    assert straight["steps"] == 6
    with pytest.raises(KeyboardInterrupt):
        train(_options(vqa, tmp_path / "killed", callbacks=[_CrashAfter(3)]))
    assert (tmp_path / "killed" / "checkpoint-3").is_dir() and not (tmp_path / "killed" / "model.safetensors").exists()
    resumed = train(_options(vqa, tmp_path / "killed"))
    assert resumed["resumed_from"].endswith("checkpoint-3") and resumed["steps"] == 6
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "killed")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    # and training really moved the weights
    first = _weights(tmp_path / "straight" / "checkpoint-3")
    assert any(not torch.equal(first[k], a[k]) for k in a)


def test_training_evaluates_and_saves_a_reloadable_folder(vqa, tmp_path):
    out = tmp_path / "run"
    summary = train(_options(vqa, out, eval_data=str(vqa["test"]), eval_steps=3, resume=False))
    log = json.loads((out / "train_summary.json").read_text())
    assert "eval_loss" in summary["eval"] and log["steps"] == 6
    assert (out / "loss.csv").read_text().count(",eval,") == 2
    assert (out / "loss.png").exists()
    model = AutoModelForImageTextToText.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    assert type(model).__name__ == "EagleVLForConditionalGeneration"
    assert processor.image_token_id == model.config.image_token_id
    assert processor.template_name == "chatml_direct"
    assert model.config.vision_config.expert_order == ["convnext", "clip"]


def test_lora_run_saves_a_merged_model(vqa, tmp_path):
    pytest.importorskip("peft")
    out = tmp_path / "lora"
    base = tmp_path / "base"
    train(_options(vqa, base, max_steps=2, resume=False))
    summary = train(_options(vqa, out, model=str(base), stage="lora-experts", max_steps=3, resume=False,
                             learning_rate=1e-2))
    assert set(summary["trainable_parameters"]) == {"llm", "projector", "experts"}
    before, after = _weights(base), _weights(out)
    assert before.keys() == after.keys()  # merged: no lora_ / modules_to_save keys
    changed = {part_of(k) for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"llm", "projector", "experts"}
    assert not any("embed_tokens" in k and not torch.equal(before[k], after[k]) for k in before)


def test_bf16_autocast_runs_on_the_cpu(vqa, tmp_path):
    summary = train(_options(vqa, tmp_path / "bf16", precision="bf16", max_steps=2, save_steps=100, resume=False))
    assert summary["steps"] == 2 and summary["train_loss"] == summary["train_loss"]  # not NaN


def test_streamed_data_and_mixed_modalities_train(vqa, tmp_path, image_dir):
    datasets = pytest.importorskip("datasets")
    rows = json.loads(vqa["train"].read_text())[:8]
    rows += [{"id": f"text-{i}", "conversations": [{"from": "human", "value": "How many objects are there?"},
                                                    {"from": "gpt", "value": "two"}]} for i in range(4)]
    stream = datasets.Dataset.from_list([{**r, "image": r.get("image")} for r in rows]).to_iterable_dataset()
    summary = train(_options(vqa, tmp_path / "s", data=stream, streaming=True, max_steps=2, save_steps=100,
                             resume=False))
    assert summary["steps"] == 2


def test_trainer_uses_the_modality_sampler_and_stage_learning_rates(vqa, tmp_path, train_set):
    from eagle_hf.training import EagleTrainer
    from eagle_hf.training.api import build_training_arguments

    model, processor = build_tiny(train_set.examples)
    lrs = StageLRs(1e-3, projector=3e-3, experts=2e-4)
    apply_stage(model, "finetune", lrs)
    opts = _options(vqa, tmp_path / "t")
    trainer = EagleTrainer(model=model, args=build_training_arguments(opts, False, False), train_dataset=train_set,
                           data_collator=EagleDataCollator(processor), stage_lrs=lrs, group_by_modality_length=True)
    assert isinstance(trainer._get_train_sampler(), ModalityLengthGroupedSampler)
    optimizer = trainer.create_optimizer()
    assert {g["name"]: g["lr"] for g in optimizer.param_groups} == {
        "experts": 2e-4, "experts.no_decay": 2e-4, "llm": 1e-3, "llm.no_decay": 1e-3,
        "projector": 3e-3, "projector.no_decay": 3e-3}


# ----------------------------------------------------------------------------------------------
# CLI


def _cli(*args, cwd=None, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "eagle_hf.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def test_cli_train_then_eval(vqa, tmp_path):
    out = tmp_path / "cli"
    r = _cli("train", "--data", vqa["train"], "--image-folder", vqa["image_folder"], "--model", "tiny",
             "--output-dir", out, "--max-steps", 3, "--batch-size", 4, "--save-steps", 100)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "3/3" in r.stderr  # the progress bar
    assert json.loads(r.stdout.strip().splitlines()[-1])["steps"] == 3
    r = _cli("eval", "--model", out, "--data", vqa["test"], "--image-folder", vqa["image_folder"], "--batch-size", 5)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    n_test = len(json.loads(vqa["test"].read_text()))
    assert result["n"] == n_test and 0.0 <= result["exact_match"] <= 1.0
    assert set(result["per_type"]) == {"color", "shape", "position", "count"}


def test_cli_reports_malformed_data_in_one_line(tmp_path, image_dir):
    (tmp_path / "bad.json").write_text(json.dumps([_row("row-7", image="nope.png")]))
    r = _cli("train", "--data", tmp_path / "bad.json", "--image-folder", image_dir, "--output-dir", tmp_path / "o",
             "--max-steps", 1)
    assert r.returncode == 2
    assert "row 'row-7': image file not found" in r.stderr and "Traceback" not in r.stderr


def test_score_is_strip_and_lowercase_exact_match(train_set):
    examples = [train_set.examples[0], train_set.examples[1]]
    refs = [ex.prompt_and_answer()[1] for ex in examples]
    result = score([f"  {refs[0].upper()} ", refs[1] + "x"], examples)
    assert result["exact_match"] == 0.5 and result["n"] == 2


def test_quickstart_runs_end_to_end_in_miniature(tmp_path):
    r = _cli("quickstart", "--output-dir", tmp_path / "qs", "--generator", "shapes", "--train-images", 24,
             "--test-images", 6, "--steps-scale", 0.002, "--batch-size", 4, "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    test = json.loads((tmp_path / "qs" / "data" / "test.json").read_text())
    assert result["n"] == len(test) and result["train_steps"] == 2 + 3  # 0.002 x (1200, 1800), at least one each
    assert set(result["per_type"]) == {"color", "shape", "position", "count"}
    saved = json.loads((tmp_path / "qs" / "results.json").read_text())
    # the held-out-combination score is the mean over exactly the rows tagged held_out
    held = [p["correct"] for p in saved["predictions"] if p["id"] in {t["id"] for t in test if t["combo"] == "held_out"}]
    assert result["held_out_combo_n"] == len(held) and (not held or result["held_out_combo_exact_match"] == sum(held) / len(held))
    # the answer prior is the most frequent test answer of each type
    for t in result["per_type"]:
        answers = [row["conversations"][1]["value"] for row in test if row["type"] == t]
        assert result["answer_prior_per_type"][t] == max(answers.count(a) for a in answers) / len(answers)
    assert set(result["probe"]) == {"init", "after stage 1", "final"}
    assert all(0 <= v <= 1 for f in result["probe"].values() for v in f.values())
    assert (tmp_path / "qs" / "model" / "training_loss.csv").exists()
    assert "with image" in r.stdout and "blank image" in r.stdout and "after stage 1" in r.stdout


@pytest.mark.parametrize("flag", ["--batch-size", "--train-images", "--steps-scale"])
def test_quickstart_refuses_non_positive_sizes(tmp_path, flag):
    r = _cli("quickstart", "--output-dir", tmp_path / "qs", flag, 0)
    assert r.returncode != 0 and f"{flag} must be positive" in r.stderr
    assert not (tmp_path / "qs").exists()


@pytest.mark.slow
def test_quickstart_reaches_the_target(tmp_path):
    """The README's main command as a user runs it: >= 90 % exact match on held-out images, every
    question type learnt (shape included), while the same model shown blank images stays within
    three standard errors of the answer prior measured on the same test questions."""
    r = _cli("quickstart", "--output-dir", tmp_path / "qs", "--no-progress", timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["n"] == 1200
    assert result["exact_match"] >= 0.9, result
    assert min(result["per_type"].values()) >= 0.8, result["per_type"]
    assert result["text_only_exact_match"] <= result["answer_prior_exact_match"] + result["blank_image_margin"], result
    # what pre-alignment changes: the image token under an object carries its shape (linear probe on
    # held-out images; measured 0.49 at init, 0.93 after stage 1, 0.99 at the end)
    assert result["probe"]["after stage 1"]["shape"] > result["probe"]["init"]["shape"] + 0.2, result["probe"]
    assert (tmp_path / "qs" / "model" / "training_loss.png").stat().st_size > 0


# ----------------------------------------------------------------------------------------------
# Synthetic data


def test_synthetic_rows_are_consistent(vqa):
    test = json.loads(vqa["test"].read_text())
    gen = get_generator("grouped")
    for row in test:
        assert row["conversations"][1]["value"] in gen.answers(row["type"])
        assert (vqa["image_folder"] / row["image"]).exists()
    train_rows = json.loads(vqa["train"].read_text())
    test_images = {r["image"] for r in test}
    assert not test_images & {r["image"] for r in train_rows}


# ----------------------------------------------------------------------------------------------
# Multi-process (slow)


def _free_port() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def _torchrun(nproc, *args, env_extra=None, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", _free_port(),
           "-m", "eagle_hf.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.slow
def test_ddp_two_processes_gloo(vqa, tmp_path):
    out = tmp_path / "ddp"
    r = _torchrun(2, "train", "--data", vqa["train"], "--image-folder", vqa["image_folder"], "--model", "tiny",
                  "--output-dir", out, "--max-steps", 4, "--batch-size", 2, "--save-steps", 100, "--no-progress")
    assert r.returncode == 0, r.stderr[-4000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 4 and summary["world_size"] == 2
    assert summary["distributed"] == "MULTI_CPU" and summary["wrapped_model"] == "DistributedDataParallel"
    AutoModelForImageTextToText.from_pretrained(out)


@pytest.mark.slow
def test_fsdp2_two_processes_on_the_cpu(vqa, tmp_path):
    """accelerate will not run FSDP on a CPU launch, so FSDP2 is driven directly (examples/fsdp2_cpu.py)."""
    out = tmp_path / "fsdp"
    script = Path(__file__).resolve().parents[1] / "examples" / "fsdp2_cpu.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", _free_port(),
                        str(script), "--data", str(vqa["train"]), "--image-folder", str(vqa["image_folder"]),
                        "--output-dir", str(out), "--steps", "3"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [x["step"] for x in lines if "step" in x] == [1, 2, 3]
    assert all(x["param_type"] == "DTensor" for x in lines if "step" in x)
    assert lines[-1]["world_size"] == 2
    model = AutoModelForImageTextToText.from_pretrained(out)
    assert type(model).__name__ == "EagleVLForConditionalGeneration"


def test_trainer_fsdp_on_a_cpu_only_machine_is_refused_clearly(vqa, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("GPU machine")
    with pytest.raises(ValueError, match="FSDP through the Trainer needs GPUs"):
        train(_options(vqa, tmp_path / "f", fsdp_config=str(Path(__file__).resolve().parents[1] / "examples" /
                                                             "fsdp_config.json")))


@pytest.mark.slow
@pytest.mark.parametrize("config", ["ds_zero2.json", "ds_zero3.json"])
def test_deepspeed_two_processes_on_the_cpu(vqa, tmp_path, config):
    """DeepSpeed is no dependency of eagle-hf; where it is installed, ZeRO-2 and ZeRO-3 run on the CPU
    (DeepSpeed's CPU accelerator, gloo, its JIT-built shared-memory comm op), ZeRO-3 loading a saved
    model under zero.Init."""
    pytest.importorskip("deepspeed")
    base = tmp_path / "base"
    train(_options(vqa, base, max_steps=1, save_steps=100, resume=False))
    out = tmp_path / "ds"
    cfg = Path(__file__).resolve().parents[1] / "examples" / config
    r = _torchrun(2, "train", "--data", vqa["train"], "--image-folder", vqa["image_folder"], "--model", base,
                  "--output-dir", out, "--max-steps", 2, "--batch-size", 2, "--save-steps", 100, "--no-progress",
                  "--deepspeed", cfg, "--learning-rate", 1e-3)
    assert r.returncode == 0, r.stderr[-4000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["distributed"] == "DEEPSPEED" and summary["world_size"] == 2 and summary["steps"] == 2
    before, after = _weights(base), _weights(out)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_one_ignore_index_and_image_token():
    """The labels the processor and the collator write are the ones the model's loss skips, and the
    image placeholder of data rows, tokenizers, conversion and the processor is one string."""
    import inspect

    from transformers.loss.loss_utils import ForCausalLMLoss

    from eagle_hf.modeling import modeling_eagle
    from eagle_hf.processing import IMAGE_TOKEN, EagleProcessor
    from eagle_hf.training import data, tokenizer

    assert IGNORE_INDEX == modeling_eagle.IGNORE_INDEX == -100
    assert inspect.signature(ForCausalLMLoss).parameters["ignore_index"].default == IGNORE_INDEX
    assert IMAGE_TOKEN == "<image>"
    assert data.IMAGE_TOKEN is tokenizer.IMAGE_TOKEN is IMAGE_TOKEN
    assert inspect.signature(EagleProcessor.__init__).parameters["image_token"].default == IMAGE_TOKEN

