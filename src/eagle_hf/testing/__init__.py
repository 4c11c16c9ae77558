"""Test support: tiny offline checkpoints (``checkpoints``) and number-for-number checks against
the original code's fixtures (``parity``). Used by the test suite, the examples and benchmarks;
nothing in the library imports it."""

from .checkpoints import IMAGE_TOKEN, build_tiny_checkpoint, build_tiny_processor, build_tiny_tokenizer, make_image

__all__ = ["IMAGE_TOKEN", "build_tiny_checkpoint", "build_tiny_processor", "build_tiny_tokenizer", "make_image"]
