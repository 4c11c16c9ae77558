"""TRL's `SFTTrainer` drives eagle-hf unmodified (TRL itself runs here, nothing is mocked).

TRL's vision collator (`trl/trainer/sft_trainer.py`, `DataCollatorForVisionLanguageModeling`) renders
each row with ``processor.apply_chat_template(..., processor_kwargs={"add_special_tokens": False,
"truncation": ..., "max_length": ...})`` and takes ``input_ids`` as labels, masked to the assistant
turns with ``assistant_only_loss=True``. These tests check that for the same rows it builds exactly
the input ids, attention mask, labels and pixels of eagle-hf's own `EagleDataCollator` (the BOS of
Llama-family tokenizers included), that training by path and by model object lowers the loss, and
that a ``max_length`` that would cut an image is refused with a message.
"""

import datasets
import pytest
import torch
import trl

import eagle_hf  # (registers the Auto classes)
from eagle_hf.testing import build_tiny_checkpoint, make_image
from eagle_hf.training.data import EagleDataCollator

COLOURS = ["red", "green", "blue", "yellow"]


def vision_rows(n: int = 8) -> list[dict]:
    """``images`` + ``messages`` rows (TRL's vision dataset format); the answer is the image's seed colour."""
    rows = []
    for i in range(n):
        rows.append({
            "images": [make_image(seed=i % len(COLOURS))],
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is this?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": COLOURS[i % len(COLOURS)]}]},
            ],
        })
    return rows


@pytest.fixture(scope="module", params=[True, False], ids=["bos-tokenizer", "no-bos-tokenizer"])
def bos_ckpt(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-trl")
    model, processor = build_tiny_checkpoint(path, add_bos=request.param)
    return path, model, processor, request.param


def sft_config(tmp_path, **overrides):
    base = dict(output_dir=str(tmp_path / "out"), max_steps=12, per_device_train_batch_size=4, learning_rate=3e-3,
                logging_steps=1, assistant_only_loss=True, max_length=512, report_to=[], save_strategy="no",
                use_cpu=True, seed=0, dataloader_num_workers=0, lr_scheduler_type="constant")
    base.update(overrides)
    return trl.SFTConfig(**base)


def test_trl_collator_builds_the_eagle_collator_batch(bos_ckpt, tmp_path):
    path, model, processor, adds_bos = bos_ckpt
    rows = vision_rows(4)
    trainer = trl.SFTTrainer(model=model, args=sft_config(tmp_path), train_dataset=datasets.Dataset.from_list(rows),
                             processing_class=processor)
    ours = EagleDataCollator(processor)([
        {"id": i, "messages": row["messages"], "images": row["images"], "type": None} for i, row in enumerate(rows)
    ])
    theirs = trainer.data_collator([dict(row) for row in rows])
    assert torch.equal(theirs["input_ids"], ours["input_ids"])
    assert torch.equal(theirs["attention_mask"], ours["attention_mask"])
    assert torch.equal(theirs["labels"], ours["labels"])
    assert torch.equal(theirs["pixel_values"], ours["pixel_values"])
    bos = processor.tokenizer.bos_token_id
    # Independent of both collators: the BOS leads every row exactly when the tokenizer adds one, and
    # the labelled tokens are the answer word and the closing </s>.
    assert bool((theirs["input_ids"][:, 0] == bos).all()) is adds_bos
    answer = processor.tokenizer.convert_tokens_to_ids(COLOURS[1])
    kept = theirs["labels"][1][theirs["labels"][1] != -100].tolist()
    assert kept == [answer, processor.tokenizer.eos_token_id]


@pytest.mark.parametrize("by_path", [True, False], ids=["path", "model-object"])
def test_sft_trainer_fine_tunes_and_the_loss_falls(ckpt, tmp_path, by_path):
    path, model, processor = ckpt
    model = str(path) if by_path else eagle_hf.EagleVLForConditionalGeneration.from_pretrained(path)
    trainer = trl.SFTTrainer(model=model, args=sft_config(tmp_path), train_dataset=datasets.Dataset.from_list(
        vision_rows(8)), processing_class=None if by_path else processor)
    assert type(trainer.model).__name__ == "EagleVLForConditionalGeneration"
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, losses
    moved = {k for k, v in trainer.model.named_parameters() if not torch.equal(v.detach(), before[k])}
    assert any(k.startswith("model.vision_tower.") for k in moved)
    assert any(k.startswith("model.multi_modal_projector.") for k in moved)


def test_max_length_that_cuts_an_image_is_refused_with_a_message(ckpt, tmp_path):
    path, model, processor = ckpt
    per_image = model.config.image_seq_length
    trainer = trl.SFTTrainer(model=model, args=sft_config(tmp_path, max_length=per_image // 2),
                             train_dataset=datasets.Dataset.from_list(vision_rows(2)), processing_class=processor)
    with pytest.raises(ValueError, match="increase max_length"):
        trainer.data_collator([dict(row) for row in vision_rows(2)])
