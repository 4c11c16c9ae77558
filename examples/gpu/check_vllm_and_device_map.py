"""GPU check (not run by CI; needs a CUDA machine and `pip install -e ".[vllm]"`):

1. vLLM serves a tiny eagle-hf checkpoint through its Transformers modeling backend (found via
   eagle-hf's ``vllm.general_plugins`` entry point) and its greedy tokens equal ``generate``'s;
2. a ``device_map`` that puts experts on different devices (cuda:0 and the CPU) gives the logits of
   the model on one device (expert outputs are fused on the input's device).

    python examples/gpu/check_vllm_and_device_map.py [--out DIR]

Prints one JSON line and exits non-zero when a check fails.
"""

import argparse
import json
import sys
import tempfile

import torch

MAX_TOKENS = 8
QUESTIONS = ["What is in this image?", "Describe this picture.", "What color is it?"]


def transformers_answers(path, images):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).to("cuda").eval()
    processor = AutoProcessor.from_pretrained(path)
    prompts, answers = [], []
    for question, image in zip(QUESTIONS, images):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(text=prompt, images=[image], return_tensors="pt").to("cuda")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
        prompts.append(prompt)
        answers.append(out[0, inputs["input_ids"].shape[1]:].tolist())
    del model
    torch.cuda.empty_cache()
    return prompts, answers


def vllm_answers(path, prompts, images):
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(path), dtype="float32", max_model_len=512, enforce_eager=True,
              limit_mm_per_prompt={"image": 1}, gpu_memory_utilization=0.3)
    outputs = llm.generate([{"prompt": p, "multi_modal_data": {"image": im}} for p, im in zip(prompts, images)],
                           SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS))
    return [list(o.outputs[0].token_ids) for o in outputs]


def device_map_check(path, image):
    from transformers import AutoProcessor

    from eagle_hf import EagleVLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(path)
    inputs = processor(text=processor.image_token + "\nWhat is it?", images=[image], return_tensors="pt")
    one = EagleVLForConditionalGeneration.from_pretrained(path, device_map={"": 0}).eval()
    experts = one.config.vision_config.expert_order
    split = {f"model.vision_tower.{name}": (0 if i % 2 else "cpu") for i, name in enumerate(experts)}
    split.update({"model.multi_modal_projector": 0, "model.language_model": 0, "lm_head": 0})
    many = EagleVLForConditionalGeneration.from_pretrained(path, device_map=split).eval()
    with torch.no_grad():
        a = one(**inputs.to("cuda")).logits.float().cpu()
        b = many(**inputs.to("cuda")).logits.float().cpu()
    return float((a - b).abs().max()), sorted({str(v) for v in many.hf_device_map.values()})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="folder for the tiny checkpoint (default: a temporary one)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("this check needs a CUDA GPU", file=sys.stderr)
        return 2
    from eagle_hf.testing import build_tiny_checkpoint, make_image

    path = args.out or tempfile.mkdtemp(prefix="eagle-tiny-vllm-")
    build_tiny_checkpoint(path, add_bos=True, max_new_tokens=MAX_TOKENS)
    images = [make_image(seed=i) for i in range(len(QUESTIONS))]
    result = {"checkpoint": str(path)}
    prompts, expected = transformers_answers(path, images)
    result["device_map_max_abs_diff"], result["devices"] = device_map_check(path, images[0])
    try:
        got = vllm_answers(path, prompts, images)
        result["vllm_equal"] = got == expected
        result["vllm"], result["generate"] = got, expected
    except Exception as err:  # report, then fail
        result["vllm_error"] = f"{type(err).__name__}: {err}"
        result["vllm_equal"] = False
    ok = result["vllm_equal"] and result["device_map_max_abs_diff"] < 1e-4
    print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
