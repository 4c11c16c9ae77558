"""Glue that lets the standard tools drive eagle-hf models unmodified: lmms-eval (``lmms_eval``),
OpenAI-compatible serving on transformers' own server (``serve``), vLLM's Transformers backend
(``vllm``). Each module imports its tool only when used; the modeling package imports nothing from
here."""
