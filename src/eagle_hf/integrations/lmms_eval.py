"""lmms-eval model ``eagle_hf``: ``lmms-eval --model eagle_hf --model_args pretrained=PATH --tasks ...``.

lmms-eval (0.7.x) finds plugin models through the ``lmms_eval.models`` entry-point group
(``lmms_eval/models/__init__.py``: ``MODEL_REGISTRY_V2.load_entrypoint_manifests``); eagle-hf's
setup.cfg points it at :func:`manifest`. Its generic Hugging Face model cannot be used: it resolves
eagle-hf to the head-less ``EagleVLModel`` through ``AutoModel``.

Answers are produced by the same code as ``eagle-hf eval`` (``training.evaluation.generate_answers``:
the processor's conversation template, left-padded greedy batches, the template's stop string), so a
task scored by exact match gives the same number both ways. The request's context is one user turn;
``<image>`` written in it moves in front of the text like in LLaVA data rows.
"""

from __future__ import annotations

import logging

from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest

logger = logging.getLogger(__name__)

MODEL_ID = "eagle_hf"


def manifest() -> ModelManifest:
    """The entry point's payload (lmms-eval calls it when it builds its model registry)."""
    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.EagleLMMs")


class EagleLMMs(lmms):
    """``model_args``: ``pretrained`` (an eagle-hf or original EAGLE folder), ``device`` (default: cuda
    when available), ``dtype`` (``float32``, ``bfloat16``, ...), ``max_new_tokens`` (default 16, a task's
    ``generation_kwargs`` override it), ``template`` (default: the processor's)."""

    is_simple = True

    def __init__(self, pretrained: str, device: str | None = None, dtype: str | None = None, batch_size: int | str = 1,
                 max_new_tokens: int | str = 16, template: str | None = None, **kwargs):
        super().__init__()
        from ..dtypes import parse_dtype
        from ..training.evaluation import load_for_eval

        ignored = sorted(k for k, v in kwargs.items() if v is not None)
        if ignored:
            logger.warning("eagle_hf ignores the lmms-eval arguments %s", ignored)
        self.model, self.processor = load_for_eval(pretrained, device=device, dtype=parse_dtype(dtype))
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.template = template

    def generate_until(self, requests) -> list[str]:
        from ..processing import IMAGE_TOKEN
        from ..training.data import Example
        from ..training.evaluation import generate_answers

        answers: list[str] = []
        # One generate call per run of requests with the same generation settings, in request order.
        groups: list[tuple[tuple, list]] = []
        for request in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            gen_kwargs = dict(gen_kwargs or {})
            if gen_kwargs.get("do_sample") or (gen_kwargs.get("temperature") or 0) > 0:
                logger.warning("eagle_hf answers greedily; ignoring do_sample/temperature of task %s", task)
            key = (int(gen_kwargs.get("max_new_tokens", self.max_new_tokens)), tuple(_until(gen_kwargs)))
            visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else []
            images = [v for v in (visuals or []) if v is not None]
            text = context.replace(IMAGE_TOKEN, "").strip() if images else context
            content = [{"type": "image"}] * len(images) + [{"type": "text", "text": text}]
            example = Example(id=doc_id, messages=[{"role": "user", "content": content}], images=images)
            if groups and groups[-1][0] == key:
                groups[-1][1].append(example)
            else:
                groups.append((key, [example]))
        for (max_new_tokens, until), examples in groups:
            for answer in generate_answers(self.model, self.processor, examples, batch_size=self.batch_size,
                                           max_new_tokens=max_new_tokens, template=self.template):
                for stop in until:
                    answer = answer.split(stop)[0]
                answers.append(answer.strip())
        return answers

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("eagle_hf answers single-turn generate_until tasks; multi-round is not supported")

    def loglikelihood(self, requests):
        raise NotImplementedError("eagle_hf supports generate_until tasks only (no loglikelihood scoring yet)")


def _until(gen_kwargs: dict) -> list[str]:
    until = gen_kwargs.get("until") or []
    return [until] if isinstance(until, str) else [u for u in until if u]
