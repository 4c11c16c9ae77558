"""Conversation templates of the original EAGLE code base, described once as data.

Every template is a :class:`ConversationTemplate` (system text, roles, separator style, separators).
Two renderers are derived from that data and must agree byte for byte:

* :func:`render` / :func:`render_with_spans` — plain Python, used for label building and tests;
* :func:`jinja_chat_template` — a Jinja string for ``apply_chat_template`` (saved as ``chat_template.jinja``).

Messages use the Hugging Face chat format::

    [{"role": "system" | "user" | "assistant",
      "content": "text" | [{"type": "image"}, {"type": "text", "text": "..."}]}]

Rules shared by both renderers (they reproduce ``eagle/conversation.py`` ``get_prompt`` and the
training-time ``preprocess_multimodal`` / ``preprocess_plain`` of the original ``train.py``):

* every image item of a message becomes ``image_token + "\\n"`` and all of them are put in front of the
  message text, because the original training always moved ``<image>`` to the start of its message;
* text items are concatenated in order without a separator; a string content is used verbatim (an
  ``<image>`` written inside it stays where it is);
* an optional leading system message replaces the template's default system text, but keeps the
  template's own system header (e.g. Llama-3's ``<|start_header_id|>system...``);
* after the optional system message, roles must alternate user/assistant starting with user;
* an assistant turn renders ``prefix + answer + closing separator``; the answer and its closing
  separator (``</s>``, ``<|eot_id|>``, ``<|im_end|>`` ...) form the *assistant span*, which is exactly
  what the original training un-masked in the labels (and is wrapped in ``{% generation %}`` in Jinja);
* ``plain`` (stage-1 pre-training): a user turn that is answered renders only its image tokens, with
  neither newline nor text, so a captioning pair becomes ``"<image>" + caption + "\\n"`` like the
  original ``preprocess_plain``; an unanswered final user turn renders as the original
  ``get_prompt`` did (``"<image>\\nquestion\\n"``). The original ``get_prompt`` raised a TypeError for a
  ``plain`` conversation containing an answer; here it renders the training form instead.

Templates with preset few-shot messages (``default``/``v0``) and the ``LLAMA_2`` separator style
(``llama_2``, ``llava_llama_2``, ``mistral_instruct``) are not provided: no EAGLE model used them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


__all__ = [
    "IMAGE_TOKEN",
    "ConversationTemplate",
    "TEMPLATES",
    "TEMPLATE_ALIASES",
    "get_template",
    "list_templates",
    "render",
    "render_with_spans",
    "assistant_spans",
    "jinja_chat_template",
]

# The image placeholder of LLaVA-format data and of the original prompts; the processor's default
# `image_token` (a processor may be saved with another).
IMAGE_TOKEN = "<image>"

_SEP_STYLES = ("SINGLE", "TWO", "MPT", "PLAIN")


@dataclass(frozen=True)
class ConversationTemplate:
    """One conversation template of the original code, as data.

    ``system_prefix + system_message`` is the original ``Conversation.system`` string; only
    ``system_message`` is replaced by a system message in the chat.
    """

    name: str
    sep_style: str
    system_message: str
    roles: tuple[str, str]
    sep: str
    sep2: str | None = None
    system_prefix: str = ""
    version: str = ""

    def __post_init__(self):
        if self.sep_style not in _SEP_STYLES:
            raise ValueError(f"unknown sep_style {self.sep_style!r}; expected one of {_SEP_STYLES}")
        if self.sep_style == "TWO" and self.sep2 is None:
            raise ValueError(f"template {self.name!r}: sep_style TWO needs sep2")

    # The strings below are the only place where separator styles are interpreted; both renderers
    # only concatenate them.

    @property
    def system_suffix(self) -> str:
        return "" if self.sep_style == "PLAIN" else self.sep

    @property
    def user_prefix(self) -> str:
        if self.sep_style in ("SINGLE", "TWO"):
            return self.roles[0] + ": "
        if self.sep_style == "MPT":
            return self.roles[0]
        return ""

    @property
    def user_suffix(self) -> str:
        return self.sep

    @property
    def assistant_prefix(self) -> str:
        if self.sep_style in ("SINGLE", "TWO"):
            return self.roles[1] + ": "
        if self.sep_style == "MPT":
            return self.roles[1]
        return ""

    @property
    def assistant_suffix(self) -> str:
        # PLAIN has sep2=None in the original; its training form closes a caption with "\n" (= sep).
        return self.sep2 if self.sep_style == "TWO" else self.sep

    @property
    def generation_prompt(self) -> str:
        if self.sep_style in ("SINGLE", "TWO"):
            return self.roles[1] + ":"
        if self.sep_style == "MPT":
            return self.roles[1]
        return ""

    @property
    def answered_user_images_only(self) -> bool:
        return self.sep_style == "PLAIN"

    @property
    def stop_str(self) -> str | None:
        """The original demo's stop string: ``sep`` for SINGLE/MPT, otherwise ``sep2``."""
        return self.sep if self.sep_style in ("SINGLE", "MPT") else self.sep2

    @property
    def system(self) -> str:
        return self.system_prefix + self.system_message


_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_HUMAN_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
_CHATML_ROLES = ("<|im_start|>user\n", "<|im_start|>assistant\n")

TEMPLATES: dict[str, ConversationTemplate] = {
    t.name: t
    for t in (
        ConversationTemplate(
            name="vicuna_v1", sep_style="TWO", system_message=_VICUNA_SYSTEM, roles=("USER", "ASSISTANT"),
            sep=" ", sep2="</s>", version="v1",
        ),
        ConversationTemplate(
            name="llava_v1", sep_style="TWO", system_message=_HUMAN_SYSTEM, roles=("USER", "ASSISTANT"),
            sep=" ", sep2="</s>", version="v1",
        ),
        ConversationTemplate(
            name="llama3", sep_style="MPT",
            system_prefix="<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n",
            system_message=_VICUNA_SYSTEM,
            roles=("<|start_header_id|>user<|end_header_id|>\n\n", "<|start_header_id|>assistant<|end_header_id|>\n\n"),
            sep="<|eot_id|>", version="llama3",
        ),
        ConversationTemplate(
            name="yi_34b_chatml_direct", sep_style="MPT", system_prefix="<|im_start|>system\n",
            system_message="Answer the questions.", roles=_CHATML_ROLES, sep="<|im_end|>", version="mpt-yi-34b",
        ),
        ConversationTemplate(
            name="chatml_direct", sep_style="MPT", system_prefix="<|im_start|>system\n",
            system_message="Answer the questions.", roles=_CHATML_ROLES, sep="<|im_end|>", version="mpt",
        ),
        ConversationTemplate(
            name="mpt", sep_style="MPT", system_prefix="<|im_start|>system\n",
            system_message=(
                "A conversation between a user and an LLM-based AI assistant. "
                "The assistant gives helpful and honest answers."
            ),
            roles=_CHATML_ROLES, sep="<|im_end|>", version="mpt",
        ),
        ConversationTemplate(
            name="llava_v0", sep_style="SINGLE", system_message=_HUMAN_SYSTEM, roles=("Human", "Assistant"),
            sep="###",
        ),
        ConversationTemplate(name="plain", sep_style="PLAIN", system_message="", roles=("", ""), sep="\n"),
    )
}

# Names under which the original registry holds the same object (or an identical copy).
TEMPLATE_ALIASES: dict[str, str] = {
    "v1": "vicuna_v1",
    "mistral_direct": "chatml_direct",
    "v0_plain": "plain",
}


def list_templates() -> list[str]:
    """All accepted template names, aliases included."""
    return sorted([*TEMPLATES, *TEMPLATE_ALIASES])


def get_template(name: str | ConversationTemplate) -> ConversationTemplate:
    if isinstance(name, ConversationTemplate):
        return name
    key = TEMPLATE_ALIASES.get(name, name)
    if key not in TEMPLATES:
        raise ValueError(f"unknown conversation template {name!r}; available: {', '.join(list_templates())}")
    return TEMPLATES[key]


def resolve_template_name(chat_template: str, image_token: str = IMAGE_TOKEN) -> str:
    """``chat_template`` as Jinja source: a conversation template name (``"llama3"``) is rendered
    to its Jinja template; a string without Jinja tags that names no template is refused (it would
    otherwise be rendered as the literal prompt)."""
    if "{{" in chat_template or "{%" in chat_template:
        return chat_template
    if TEMPLATE_ALIASES.get(chat_template, chat_template) not in TEMPLATES:
        raise ValueError(
            f"chat_template={chat_template!r} is neither a Jinja template nor a known conversation template name; "
            f"known names: {', '.join(list_templates())}"
        )
    return jinja_chat_template(chat_template, image_token=image_token)


# --------------------------------------------------------------------------------------------------
# Python renderer


def _message_parts(message: dict[str, Any], strict: bool = True) -> tuple[int, str]:
    """(number of image items, concatenated text) of one message."""
    content = message.get("content")
    if content is None:
        return 0, ""
    if isinstance(content, str):
        return 0, content
    n_images, text = 0, []
    for item in content:
        kind = item.get("type")
        if kind == "image":
            n_images += 1
        elif kind == "text":
            text.append(item.get("text") or "")
        elif strict:
            raise ValueError(f"EAGLE chat templates only support 'image' and 'text' content items, got {kind!r}")
    return n_images, "".join(text)


def render_with_spans(
    template: str | ConversationTemplate,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool = False,
    image_token: str = IMAGE_TOKEN,
    bos_token: str | None = None,
) -> tuple[str, list[tuple[int, int]]]:
    """Render ``messages`` and return ``(prompt, assistant_spans)``.

    Each span ``(start, end)`` covers one assistant answer plus its closing separator, in characters
    of ``prompt`` — the part the original training computed the loss on. ``bos_token``: a string put
    in front (what a chat template made with ``jinja_chat_template(..., bos_token=True)`` emits).
    """
    t = get_template(template)
    messages = list(messages)
    system = t.system_message
    if messages and messages[0].get("role") == "system":
        system = _message_parts(messages[0], strict=False)[1]
        messages = messages[1:]

    out = [bos_token or "", t.system_prefix, system, t.system_suffix]
    length = sum(map(len, out))
    spans: list[tuple[int, int]] = []

    def emit(piece: str) -> None:
        nonlocal length
        out.append(piece)
        length += len(piece)

    for index, message in enumerate(messages):
        role = message.get("role")
        expected = "user" if index % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(
                "EAGLE conversation templates need user/assistant messages alternating, starting with user "
                f"(after an optional system message); message {index} has role {role!r}, expected {expected!r}"
            )
        n_images, text = _message_parts(message)
        if role == "user":
            answered = index + 1 < len(messages)
            if answered and t.answered_user_images_only:
                emit(image_token * n_images)
            else:
                emit(t.user_prefix + (image_token + "\n") * n_images + text + t.user_suffix)
        else:
            emit(t.assistant_prefix)
            start = length
            emit((image_token + "\n") * n_images + text + t.assistant_suffix)
            spans.append((start, length))
    if add_generation_prompt:
        emit(t.generation_prompt)
    return "".join(out), spans


def render(
    template: str | ConversationTemplate,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool = False,
    image_token: str = IMAGE_TOKEN,
    bos_token: str | None = None,
) -> str:
    """The prompt string the original ``Conversation.get_prompt`` produced for ``messages``."""
    return render_with_spans(template, messages, add_generation_prompt, image_token, bos_token)[0]


def assistant_spans(
    template: str | ConversationTemplate,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool = False,
    image_token: str = IMAGE_TOKEN,
) -> list[tuple[int, int]]:
    """Character spans of the assistant answers (each with its closing separator) in the rendered prompt."""
    return render_with_spans(template, messages, add_generation_prompt, image_token)[1]


# --------------------------------------------------------------------------------------------------
# Jinja renderer


def _lit(value: str) -> str:
    # JSON string escapes are a subset of what Jinja's string literals decode.
    return json.dumps(value, ensure_ascii=False)


def jinja_chat_template(template: str | ConversationTemplate, image_token: str = IMAGE_TOKEN,
                        bos_token: bool = False) -> str:
    """A Jinja chat template that renders exactly like :func:`render`.

    With ``bos_token`` the prompt starts with the tokenizer's BOS string (``render(...,
    bos_token=tokenizer.bos_token)``). Processors make their template that way when their tokenizer
    adds a BOS itself: tools that tokenise rendered chats with ``add_special_tokens=False`` (TRL's
    collators) then get the BOS the model was trained with, and the processor drops the textual
    copy when it adds its own (see ``EagleProcessor._encode``).

    Every statement trims the whitespace around it, so the layout below never reaches the output; the
    assistant answer and its closing separator sit inside ``{% generation %}`` so that
    ``return_assistant_tokens_mask=True`` marks the same tokens the original training learned.
    """
    t = get_template(template)
    image_piece = _lit(image_token + "\n")
    if t.answered_user_images_only:
        user_block = f"""\
{{%- if not loop.last -%}}
{{{{- {_lit(image_token)} * ns.n_images -}}}}
{{%- else -%}}
{{{{- {_lit(t.user_prefix)} ~ {image_piece} * ns.n_images ~ ns.text ~ {_lit(t.user_suffix)} -}}}}
{{%- endif -%}}"""
    else:
        user_block = f"{{{{- {_lit(t.user_prefix)} ~ {image_piece} * ns.n_images ~ ns.text ~ {_lit(t.user_suffix)} -}}}}"

    bos_block = "{{- bos_token -}}\n" if bos_token else ""
    return f"""\
{{#- EAGLE conversation template "{t.name}" (sep_style {t.sep_style}); generated by eagle_hf.processing.chat_templates -#}}
{{%- set ns = namespace(system={_lit(t.system_message)}, text="", n_images=0) -%}}
{{%- set loop_messages = messages -%}}
{bos_block}{{%- if messages and messages[0]["role"] == "system" -%}}
{{%- if messages[0]["content"] is string -%}}
{{%- set ns.system = messages[0]["content"] -%}}
{{%- else -%}}
{{%- set ns.system = "" -%}}
{{%- for item in messages[0]["content"] -%}}
{{%- if item["type"] == "text" -%}}
{{%- set ns.system = ns.system ~ item["text"] -%}}
{{%- endif -%}}
{{%- endfor -%}}
{{%- endif -%}}
{{%- set loop_messages = messages[1:] -%}}
{{%- endif -%}}
{{{{- {_lit(t.system_prefix)} ~ ns.system ~ {_lit(t.system_suffix)} -}}}}
{{%- for message in loop_messages -%}}
{{%- if message["role"] != ("user" if loop.index0 % 2 == 0 else "assistant") -%}}
{{{{- raise_exception("EAGLE conversation templates need user/assistant messages alternating, starting with user (after an optional system message).") -}}}}
{{%- endif -%}}
{{%- set ns.text = "" -%}}
{{%- set ns.n_images = 0 -%}}
{{%- if message["content"] is string -%}}
{{%- set ns.text = message["content"] -%}}
{{%- elif message["content"] is defined -%}}
{{%- for item in message["content"] -%}}
{{%- if item["type"] == "image" -%}}
{{%- set ns.n_images = ns.n_images + 1 -%}}
{{%- elif item["type"] == "text" -%}}
{{%- set ns.text = ns.text ~ item["text"] -%}}
{{%- else -%}}
{{{{- raise_exception("EAGLE chat templates only support 'image' and 'text' content items.") -}}}}
{{%- endif -%}}
{{%- endfor -%}}
{{%- endif -%}}
{{%- if message["role"] == "user" -%}}
{user_block}
{{%- else -%}}
{{{{- {_lit(t.assistant_prefix)} -}}}}
{{%- generation -%}}
{{{{- {image_piece} * ns.n_images ~ ns.text ~ {_lit(t.assistant_suffix)} -}}}}
{{%- endgeneration -%}}
{{%- endif -%}}
{{%- endfor -%}}
{{%- if add_generation_prompt -%}}
{{{{- {_lit(t.generation_prompt)} -}}}}
{{%- endif -%}}
"""
