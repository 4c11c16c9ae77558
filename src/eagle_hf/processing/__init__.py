"""EAGLE preprocessing: image processor, processor and the original conversation templates.

Files in this package import only each other (single-dot imports) so that they can be copied flat next
to a checkpoint for ``trust_remote_code`` loading; they never import ``eagle_hf.modeling``.
"""

from .chat_templates import (
    IMAGE_TOKEN,
    TEMPLATE_ALIASES,
    TEMPLATES,
    ConversationTemplate,
    assistant_spans,
    get_template,
    jinja_chat_template,
    list_templates,
    render,
    render_with_spans,
)
from .image_processing_eagle import (
    EagleImageProcessor,
    EagleImageProcessorKwargs,
    EagleImageProcessorTorchvision,
    flatten_images,
    load_image_rgb,
)
from .processing_eagle import IGNORE_INDEX, EagleProcessor, EagleProcessorKwargs


__all__ = [
    "EagleImageProcessor",
    "EagleImageProcessorKwargs",
    "EagleImageProcessorTorchvision",
    "EagleProcessor",
    "EagleProcessorKwargs",
    "IGNORE_INDEX",
    "IMAGE_TOKEN",
    "ConversationTemplate",
    "TEMPLATES",
    "TEMPLATE_ALIASES",
    "assistant_spans",
    "flatten_images",
    "get_template",
    "jinja_chat_template",
    "list_templates",
    "load_image_rgb",
    "render",
    "render_with_spans",
]
