"""The one table of dtype names that eagle-hf's commands, loaders and benchmarks accept.

Importing it costs nothing (torch is imported when a name is resolved), so argument parsers can
offer its names without slowing ``eagle-hf --help``.
"""

# Accepted name -> torch's attribute. The first three are the canonical names (--dtype choices).
DTYPE_NAMES = {
    "float32": "float32", "bfloat16": "bfloat16", "float16": "float16",
    "fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16",
}
DTYPE_CHOICES = ("float32", "bfloat16", "float16")


def parse_dtype(dtype):
    """``None`` or a ``torch.dtype`` as given; a name (``"bfloat16"``, ``"bf16"``,
    ``"torch.bfloat16"``) as its ``torch.dtype``. Unknown names are refused with the choices."""
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPE_NAMES:
        aliases = ", ".join(n for n in DTYPE_NAMES if n not in DTYPE_CHOICES)
        raise ValueError(f"unknown dtype {dtype!r} (use {', '.join(DTYPE_CHOICES)}; aliases: {aliases})")
    return getattr(torch, DTYPE_NAMES[name])
