"""``lmms-eval --model eagle_hf`` runs unmodified (the real lmms-eval CLI in a subprocess, found through
eagle-hf's ``lmms_eval.models`` entry point) and scores a local task exactly like ``eagle-hf eval``."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from eagle_hf.cli import main as eagle_cli
from eagle_hf.testing import make_image


pytestmark = pytest.mark.slow  # a server / CLI subprocess: run by CI's slow pass

N_ROWS = 6


def _rows(tmp_path, model, processor) -> list[dict]:
    """LLaVA rows whose reference is the model's own greedy answer for the even rows (computed here with
    ``generate``) and a word it never says for the odd ones: the expected score is 0.5 by construction
    of the data, not of the scorers."""
    rows = []
    for i in range(N_ROWS):
        image = make_image(seed=i)
        path = tmp_path / f"img{i}.png"
        image.save(path)
        question = "What is in this image?" if i % 2 else "Describe this picture."
        messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                               return_dict=True, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        answer = processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        assert answer, "the tiny model should say something"
        reference = answer if i % 2 == 0 else "zebra-not-a-word"
        rows.append({"id": f"r{i}", "image": str(path), "type": "even" if i % 2 == 0 else "odd",
                     "conversations": [{"from": "human", "value": f"<image>\n{question}"},
                                       {"from": "gpt", "value": reference}]})
    return rows


TASK_UTILS = textwrap.dedent('''
    from PIL import Image


    def doc_to_visual(doc):
        return [Image.open(doc["image"]).convert("RGB")]


    def doc_to_text(doc, lmms_eval_specific_kwargs=None):
        return doc["conversations"][0]["value"]


    def doc_to_target(doc):
        return doc["conversations"][1]["value"]


    def process_results(doc, results):
        hit = results[0].strip().lower() == doc["conversations"][1]["value"].strip().lower()
        return {"exact_match": float(hit)}
''')


def _task(folder, data_file) -> None:
    (folder / "utils.py").write_text(TASK_UTILS)
    (folder / "eagle_local.yaml").write_text(textwrap.dedent(f'''
        task: eagle_local
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {data_file}
        test_split: test
        output_type: generate_until
        doc_to_visual: !function utils.doc_to_visual
        doc_to_text: !function utils.doc_to_text
        doc_to_target: !function utils.doc_to_target
        generation_kwargs:
          max_new_tokens: 6
          do_sample: false
        process_results: !function utils.process_results
        metric_list:
          - metric: exact_match
            aggregation: mean
            higher_is_better: true
        metadata:
          version: 0.0
    '''))


def test_lmms_eval_cli_scores_like_eagle_hf_eval(ckpt, tmp_path, capsys):
    path, model, processor = ckpt
    rows = _rows(tmp_path, model, processor)
    data_file = tmp_path / "test.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    _task(task_dir, data_file)

    assert eagle_cli(["eval", "--model", str(path), "--data", str(data_file), "--max-new-tokens", "6",
                      "--batch-size", "4", "--device", "cpu", "--no-progress"]) == 0
    ours = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ours["exact_match"] == 0.5 and ours["n"] == N_ROWS

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets"), "TOKENIZERS_PARALLELISM": "false"}
    out_dir = tmp_path / "lmms-out"
    proc = subprocess.run(
        [sys.executable, "-m", "lmms_eval", "--model", "eagle_hf",
         "--model_args", f"pretrained={path},device=cpu", "--tasks", "eagle_local", "--include_path", str(task_dir),
         "--batch_size", "4", "--output_path", str(out_dir)],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in out_dir.rglob("*_results.json")]
    assert len(results) == 1, (list(out_dir.rglob("*")), proc.stdout[-4000:], proc.stderr[-4000:])
    task = results[0]["results"]["eagle_local"]
    score = next(v for k, v in task.items() if k.startswith("exact_match") and "stderr" not in k)
    assert score == ours["exact_match"] == 0.5
