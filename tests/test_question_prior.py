"""Training as a product with the counted question-only answer prior (`training.question_prior`)."""

import argparse
import math

import pytest
import torch
from PIL import Image
from transformers import TrainingArguments

import eagle_hf  # noqa: F401
from eagle_hf.commands import train as train_command
from eagle_hf.processing import IGNORE_INDEX
from eagle_hf.training import (
    EagleDataCollator,
    LlavaDataset,
    LlavaIterableDataset,
    TrainOptions,
    score,
    train,
)
from eagle_hf.training.evaluation import generate_answers
from eagle_hf.training.question_prior import QuestionPrior
from eagle_hf.training.tiny import build_tiny
from eagle_hf.training.trainer import EagleTrainer


def _row(row_id, *turns):
    conv = []
    for k, (question, answer) in enumerate(turns):
        conv += [{"from": "human", "value": ("<image>\n" if k == 0 else "") + question}, {"from": "gpt", "value": answer}]
    return {"id": row_id, "image": f"{row_id}.png", "conversations": conv}


# "sky" is answered blue twice and grey once; the later turn "Is it day?" follows different
# first answers; every other answer is fixed by its question.
ROWS = [
    _row("r1", ("What colour is the sky?", "blue"), ("Is it day?", "yes")),
    _row("r2", ("What colour is the sky?", "blue")),
    _row("r3", ("What colour is the sky?", "grey")),
    _row("r4", ("What colour is grass?", "green"), ("Is it day?", "yes")),
]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("prior_images")
    for k in range(8):
        Image.new("RGB", (64, 64), (30 * k, 200 - 20 * k, 90)).save(root / f"r{k + 1}.png")
    return root


@pytest.fixture(scope="module")
def tiny(image_dir):
    return build_tiny(LlavaDataset(ROWS, image_dir).examples, seed=0)


def _vocab(model) -> int:
    return model.get_output_embeddings().out_features


def _first_answer_ids(collator, dataset, index) -> list[int]:
    labels = collator.encode(dataset[index])["labels"]
    return [labels[p] for p in range(1, len(labels)) if labels[p] != IGNORE_INDEX and labels[p - 1] == IGNORE_INDEX]


def test_prior_counts_the_first_answer_token_of_each_question_turn(tiny, image_dir):
    model, processor = tiny
    dataset, collator, alpha, vocab = LlavaDataset(ROWS, image_dir), EagleDataCollator(processor), 0.5, _vocab(model)
    prior = QuestionPrior.from_dataset(dataset, collator, vocab, alpha=alpha)
    blue, yes = _first_answer_ids(collator, dataset, 0)
    (grey,) = _first_answer_ids(collator, dataset, 2)
    green, _ = _first_answer_ids(collator, dataset, 3)
    # Three question turns: sky, grass, and "Is it day?" whatever came before it.
    assert len(prior) == 3
    by_text = {processor.tokenizer.decode(list(key)): prior.log_prob_row(key).exp() for key in prior.counts}
    sky = next(p for text, p in by_text.items() if "sky" in text)
    day = next(p for text, p in by_text.items() if "day" in text)
    grass = next(p for text, p in by_text.items() if "grass" in text)
    for text in by_text:
        assert processor.image_token not in text and "blue" not in text and "green" not in text, text
    assert math.isclose(sky[blue], (2 + alpha) / (3 + vocab * alpha), rel_tol=1e-5)
    assert math.isclose(sky[grey], (1 + alpha) / (3 + vocab * alpha), rel_tol=1e-5)
    assert math.isclose(sky[green], alpha / (3 + vocab * alpha), rel_tol=1e-5)
    assert math.isclose(day[yes], (2 + alpha) / (2 + vocab * alpha), rel_tol=1e-5)
    assert math.isclose(grass[green], (1 + alpha) / (1 + vocab * alpha), rel_tol=1e-5)
    for p in (sky, day, grass, prior.log_prob_row((1, 2, 3)).exp()):
        assert math.isclose(p.sum().item(), 1.0, rel_tol=1e-5)
    assert torch.allclose(prior.log_prob_row((1, 2, 3)).exp(), torch.full((vocab,), 1 / vocab))  # never counted


def _trainer(model, tmp_path, prior):
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", per_device_train_batch_size=4)
    return EagleTrainer(model=model, args=args, question_prior=prior)


def test_loss_is_the_cross_entropy_of_the_product(tiny, image_dir, tmp_path):
    model, processor = tiny
    model.eval()
    rows = [ROWS[0], ROWS[1], ROWS[3]]  # every first answer here is fixed by its question
    dataset, collator = LlavaDataset(rows, image_dir), EagleDataCollator(processor)
    batch = collator([dataset[k] for k in range(len(rows))])
    assert batch["attention_mask"].min() == 0  # rows of different lengths: padding is part of the check
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        stock = model(**batch).loss
        # A near-uniform prior shifts all logits of a position equally: the model's own loss.
        flat = _trainer(model, tmp_path, QuestionPrior.from_dataset(dataset, collator, _vocab(model), alpha=1e9))
        torch.testing.assert_close(flat.compute_loss(model, dict(batch)), stock, rtol=1e-5, atol=1e-6)
        # A near-certain prior explains every first answer token: only the other answer tokens' plain
        # cross-entropy is left, still divided by all supervised tokens.
        sure = _trainer(model, tmp_path, QuestionPrior.from_dataset(dataset, collator, _vocab(model), alpha=1e-12))
        labels = batch["labels"]
        rest, n = 0.0, 0
        for b in range(labels.shape[0]):
            for t in range(1, labels.shape[1]):
                if labels[b, t] == IGNORE_INDEX:
                    continue
                n += 1
                if labels[b, t - 1] != IGNORE_INDEX:
                    rest += -torch.log_softmax(logits[b, t - 1], -1)[labels[b, t]].item()
        assert n > 0 and rest > 0
        loss = sure.compute_loss(model, dict(batch))
    assert math.isclose(loss.item(), rest / n, rel_tol=1e-4), (loss.item(), rest / n, stock.item())


# Each question has one answer whatever the image: everything is in the question text.
TEXT_ONLY = [_row(f"r{k + 1}", (q, a)) for k, (q, a) in enumerate(
    [("What colour is the sky?", "blue"), ("What colour is grass?", "green"), ("What colour is snow?", "white"),
     ("What colour is coal?", "black")] * 2)]


def _exact_match(model, processor, dataset) -> float:
    answers = generate_answers(model, processor, dataset.examples, batch_size=8, max_new_tokens=3)
    return score(answers, dataset.examples)["exact_match"]


def test_what_the_question_alone_predicts_is_left_to_the_prior(image_dir, tmp_path):
    """Plain cross-entropy learns question -> answer; the product with a prior that already knows
    it gives the model nothing to learn there, so the model alone has not learnt it."""
    dataset = LlavaDataset(TEXT_ONLY, image_dir)
    scores = {}
    for name, alpha in (("plain", None), ("prior", 1e-3)):
        model, processor = build_tiny(dataset.examples, seed=0)
        opts = TrainOptions(data=TEXT_ONLY, image_folder=str(image_dir), output_dir=str(tmp_path / name),
                            batch_size=8, max_steps=40, learning_rate=3e-3, warmup=0, progress=False,
                            save_final=False, save_steps=10**6, resume=False, question_prior=alpha)
        summary = train(opts, model=model, processor=processor)
        assert summary["question_prior_turns"] == (None if alpha is None else 4)
        scores[name] = _exact_match(model, processor, dataset)
    assert scores["plain"] == 1.0 and scores["prior"] <= 0.25, scores


def test_bad_question_prior_settings_are_refused(tiny, image_dir):
    model, processor = tiny
    collator = EagleDataCollator(processor)
    with pytest.raises(ValueError, match=r"alpha \(--question-prior\) must be > 0"):
        QuestionPrior.from_dataset(LlavaDataset(ROWS, image_dir), collator, _vocab(model), alpha=0)
    with pytest.raises(ValueError, match="map-style data, not a stream"):
        QuestionPrior.from_dataset(LlavaIterableDataset(ROWS, image_dir), collator, _vocab(model))
    prior = QuestionPrior.from_dataset(LlavaDataset(ROWS, image_dir), collator, _vocab(model))
    batch = collator([LlavaDataset(ROWS, image_dir)[0]])
    with pytest.raises(ValueError, match="vocabulary of"):
        prior.add_to(torch.zeros(1, batch["input_ids"].shape[1], _vocab(model) + 1), batch["input_ids"], batch["labels"])


def test_cli_flag_reaches_the_options():
    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    base = ["--data", "d.json", "--output-dir", "o"]
    assert train_command.options_from_args(parser.parse_args(base)).question_prior is None
    assert train_command.options_from_args(parser.parse_args(base + ["--question-prior", "0.5"])).question_prior == 0.5
