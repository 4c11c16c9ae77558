"""`eagle-hf explore`: the design-space grid, its table, and that every number in it is what the
saved runs give when checked on their own (`eagle-hf eval`, the saved configs and weights)."""

import csv
import json

import pytest
from PIL import Image

import eagle_hf  # noqa: F401  (registers the Auto classes)
from eagle_hf.cli import main
from eagle_hf.modeling.fusion import FUSIONS


def _explore(capsys, out, *args):
    code = main(["explore", "--output-dir", str(out), "--no-progress", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """Three runs (two expert subsets, two fusions; one run shared by both axes). One step per
    stage, whose learning rate the warmup holds at zero, keeps each model at its seeded random
    start, so the models answer differently from each other and checking their scores can fail."""
    out = tmp_path_factory.mktemp("explore") / "mini"
    code = main(["explore", "--output-dir", str(out), "--no-progress", "--axes", "experts,fusions",
                 "--experts", "clip,convnext", "--fusions", "channel_concat,sequence_append", "--steps", "2",
                 "--train-images", "8", "--test-images", "3", "--batch-size", "2"])
    assert code == 0
    return out, json.loads((out / "results.json").read_text())


def test_rows_follow_the_grid_and_share_runs(mini):
    out, report = mini
    rows = [(r["axis"], r["configuration"], r["run"]) for r in report["rows"]]
    assert rows == [
        ("experts", "clip", "clip__channel_concat__prealign"),
        ("experts", "clip + convnext", "clip+convnext__channel_concat__prealign"),
        ("fusions", "channel_concat", "clip+convnext__channel_concat__prealign"),
        ("fusions", "sequence_append", "clip+convnext__sequence_append__prealign"),
    ]
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted({r[2] for r in rows})
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["axis"], r["configuration"]) for r in table] == [r[:2] for r in rows]
    assert [float(r["all"]) for r in table] == [r["exact_match"] for r in report["rows"]]
    md = (out / "results.md").read_text()
    assert md.count("| clip + convnext |") == 1 and "**fusions**" in md and "| sequence_append |" in md
    test_rows = json.loads((out / "data" / "test.json").read_text())
    types = {r["type"] for r in test_rows}
    answers = {t: [r["conversations"][-1]["value"].lower() for r in test_rows if r["type"] == t] for t in types}
    baseline = report["constant_baseline"]["per_type"]
    assert baseline == {t: max(map(a.count, a)) / len(a) for t, a in answers.items()}
    assert all(r["steps"] == 2 and [s["stage"] for s in r["stages"]] == ["prealign", "finetune"]
               for r in report["rows"])


def test_tokens_and_parameters_are_those_of_the_saved_runs(mini):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out, report = mini
    for row in report["rows"]:
        folder = out / "runs" / row["run"] / "model"
        raw = json.loads((folder / "config.json").read_text())["vision_config"]
        per_expert = raw["grid_size"] ** 2
        assert row["tokens_per_image"] == per_expert * (len(raw["expert_order"]) if raw["fusion"] == "sequence_append"
                                                        else 1)
        processor = AutoProcessor.from_pretrained(folder)
        ids = processor(text="<image>\nWhat?", images=[Image.new("RGB", (64, 64))], return_tensors="pt")["input_ids"]
        assert int((ids == processor.image_token_id).sum()) == row["tokens_per_image"]
        model = AutoModelForImageTextToText.from_pretrained(folder)
        named = dict(model.named_parameters())
        assert row["params"] == sum(p.numel() for p in named.values())
        assert row["vision_params"] == sum(p.numel() for n, p in named.items() if n.startswith("model.vision_tower."))
        assert row["experts"] == raw["expert_order"] and row["fusion"] == raw["fusion"]
    by_fusion = {r["fusion"]: r for r in report["rows"] if r["axis"] == "fusions"}
    assert by_fusion["sequence_append"]["vision_params"] > by_fusion["channel_concat"]["vision_params"]


def test_scores_are_what_eagle_hf_eval_gives_for_each_saved_model(mini, capsys, tmp_path):
    out, report = mini
    data = report["data"]
    answers = {}
    for row in report["rows"]:
        predictions = tmp_path / f"{row['run']}.jsonl"
        code = main(["eval", "--model", str(out / "runs" / row["run"] / "model"), "--data", data["test"],
                     "--image-folder", data["image_folder"], "--batch-size", str(report["eval"]["batch_size"]),
                     "--max-new-tokens", str(report["eval"]["max_new_tokens"]), "--predictions", str(predictions),
                     "--no-progress"])
        assert code == 0
        scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert row["exact_match"] == scores["exact_match"] and row["n"] == scores["n"]
        assert row["per_type"] == {t: s["exact_match"] for t, s in scores["per_type"].items()}
        theirs = [json.loads(line)["prediction"] for line in predictions.read_text().splitlines()]
        ours = [json.loads(line)["prediction"] for line in
                (out / "runs" / row["run"] / "predictions.jsonl").read_text().splitlines()]
        assert ours == theirs
        answers[row["run"]] = tuple(ours)
    # The check above can fail: the runs answer (non-empty, and not all alike).
    assert any(a for run in answers.values() for a in run)
    assert len(set(answers.values())) > 1


def test_prealignment_rows_train_the_same_number_of_steps(tmp_path, capsys):
    code, stdout, _ = _explore(capsys, tmp_path / "pa", "--axes", "prealign", "--experts", "clip,convnext",
                               "--steps", 4, "--train-images", 8, "--test-images", 2, "--batch-size", 2)
    assert code == 0
    report = json.loads((tmp_path / "pa" / "results.json").read_text())
    rows = {r["recipe"]: r for r in report["rows"]}
    assert [r["configuration"] for r in report["rows"]] == [
        "finetune only", "prealign, finetune", "prealign-experts, pretrain, finetune"]
    assert {r["steps"] for r in report["rows"]} == {4}
    assert [(s["stage"], s["steps"]) for s in rows["prealign"]["stages"]] == [("prealign", 2), ("finetune", 2)]
    assert [(s["stage"], s["steps"]) for s in rows["prealign-experts"]["stages"]] == [
        ("prealign-experts", 2), ("pretrain", 1), ("finetune", 1)]
    summary = json.loads((tmp_path / "pa" / "runs" / rows["prealign-experts"]["run"] / "stage1-prealign-experts"
                          / "train_summary.json").read_text())
    assert {k: v["steps"] for k, v in summary["per_expert"].items()} == {"clip": 1, "convnext": 1}
    assert "| prealign-experts, pretrain, finetune |" in stdout


@pytest.mark.parametrize("args, message", [
    (["--axes", "experts,bogus"], "--axes: unknown axis 'bogus'; choose from experts, fusions, prealign"),
    (["--fusions", "channel_concat,nope"], "--fusions: unknown fusion 'nope'; fusions: " + ", ".join(FUSIONS)),
    (["--experts", "clip,nosuch"], "--experts: unknown expert 'nosuch'"),
    (["--steps", "0"], "--steps must be a positive whole number, got 0"),
    (["--test-images", "-1"], "--test-images must be a positive whole number, got -1"),
    (["--axes", "prealign", "--experts", "clip,convnext", "--steps", "3"], "--steps 3 is too few"),
    (["--axes", "fusions", "--experts", "convnext,clip", "--fusions", "injection"],
     "--experts/--fusions: the fusions row 'injection' (convnext+clip) cannot be built: fusion='injection'"),
])
def test_bad_choices_fail_before_anything_runs(tmp_path, capsys, args, message):
    code, _, stderr = _explore(capsys, tmp_path / "bad", *args)
    assert code == 2 and message in stderr, stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "bad").exists()
