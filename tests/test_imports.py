"""``import eagle_hf`` and ``eagle-hf --help`` import no model code; the Auto classes still
resolve eagle-hf folders (entries imported on first use, `eagle_hf._lazy`)."""

import json
import subprocess
import sys

HEAVY = ["torch", "transformers", "timm", "torchvision", "eagle_hf.modeling", "eagle_hf.processing",
         "eagle_hf.convert", "eagle_hf.commands", "eagle_hf.training", "eagle_hf.hub"]


def _loaded_after(code: str) -> list[str]:
    """Which HEAVY modules (or their sub-modules) a fresh interpreter holds after ``code``."""
    probe = (f"{code}\nimport json, sys\n"
             f"print(json.dumps(sorted({{m for m in sys.modules for h in {HEAVY!r} if m == h or m.startswith(h + '.')}})))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_eagle_hf_imports_no_model_code():
    assert _loaded_after("import eagle_hf") == []


def test_cli_help_imports_no_command_module():
    code = "from eagle_hf.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    assert _loaded_after(code) == []


def test_one_command_imports_only_its_module():
    code = "from eagle_hf.cli import main\ntry:\n    main(['convert', '--help'])\nexcept SystemExit:\n    pass"
    commands = [m for m in _loaded_after(code) if m.startswith("eagle_hf.commands.")]
    assert commands == ["eagle_hf.commands.convert"]


def test_auto_classes_load_a_folder_after_a_bare_import(ckpt):
    path, model, _ = ckpt
    code = f"""
import eagle_hf
import torch
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor, AutoImageProcessor
assert "timm" not in __import__("sys").modules
model = AutoModelForImageTextToText.from_pretrained({str(path)!r})
processor = AutoProcessor.from_pretrained({str(path)!r})
image_processor = AutoImageProcessor.from_pretrained({str(path)!r})
base = AutoModel.from_config(AutoConfig.from_pretrained({str(path)!r}))
print(type(model).__name__, type(processor).__name__, type(image_processor).__name__, type(base).__name__,
      float(sum(p.double().sum() for p in model.parameters())))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    names = out.stdout.split()
    assert names[:4] == ["EagleVLForConditionalGeneration", "EagleProcessor", "EagleImageProcessor", "EagleVLModel"]
    expected = float(sum(p.detach().double().sum() for p in model.parameters()))
    assert abs(float(names[4]) - expected) <= 1e-9 * max(1.0, abs(expected))


def test_lazy_content_resolves_on_lookup_and_yields_to_explicit_registration():
    from eagle_hf._lazy import LazyContent

    content = LazyContent({"a": 1})
    content.add(":json", "json:dumps")
    content.add(":other", "json:loads")
    assert len(content) == 3
    assert content["json"] is json.dumps and "other" in content and content.get("missing") is None
    content2 = LazyContent()
    content2.add(":json", "json:dumps")
    content2["json"] = "mine"  # an explicit registration replaces the pending entry
    assert dict(content2.items()) == {"json": "mine"}
