"""Hub releases: folder contents, model card metadata and runnable snippets, the trust_remote_code
export (loaded in a process where eagle_hf cannot be imported), and `eagle-hf push` up to the upload."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from eagle_hf import cli, hub
from eagle_hf.inference import prepare_inputs
from eagle_hf.testing import build_tiny_checkpoint, make_image

REPO = "someone/eagle-tiny"
BASE = ["lmsys/vicuna-7b-v1.5"]
RELEASE_FILES = ["README.md", "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors",
                 "processor_config.json", "tokenizer.json", "tokenizer_config.json"]
CODE_FILES = ["chat_templates.py", "configuration_eagle.py", "expert_clip.py", "expert_convnext.py", "expert_eva.py",
              "expert_hf.py", "expert_pix2struct.py", "expert_sam.py", "expert_timm.py", "fusion.py", "image_processing_eagle.py", "modeling_eagle.py",
              "modeling_mixture.py", "processing_eagle.py", "registry.py", "safetensors_header.py", "validation.py"]

# Run in a child process: eagle_hf is made unimportable (meta-path blocker and the src folder
# removed from sys.path) before anything else is imported.
BLOCK_EAGLE_HF = textwrap.dedent("""
    import importlib.abc, sys
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "eagle_hf" or name.startswith("eagle_hf."):
                raise ImportError("eagle_hf is blocked in this process")
    sys.meta_path.insert(0, _Block())
    sys.path = [p for p in sys.path if not p.rstrip("/").endswith("/src")]
    try:
        import eagle_hf
        raise SystemExit("eagle_hf is importable: the test would prove nothing")
    except ImportError:
        pass
""")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, processor = build_tiny_checkpoint(tmp_path_factory.mktemp("src"))
    return model, processor


@pytest.fixture(scope="module")
def release(tiny, tmp_path_factory):
    model, processor = tiny
    out = tmp_path_factory.mktemp("release")
    files = hub.save_release(model, processor, out, repo_id=REPO, license="apache-2.0", base_models=BASE)
    return out, files


@pytest.fixture(scope="module")
def remote(tiny, tmp_path_factory):
    model, processor = tiny
    out = tmp_path_factory.mktemp("remote")
    files = hub.export_for_remote_code(model, processor, out, repo_id=REPO, license="apache-2.0")
    return out, files


def run_python(code: str, cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    env_cache = cwd / "hf-home"
    import os

    env = dict(os.environ, HF_HOME=str(env_cache), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
               TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def expected_answer(model, processor, image, text="Describe this image.", max_new_tokens=64):
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]
    inputs = prepare_inputs(model, processor, messages)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_release_folder_is_complete(release, tiny):
    out, files = release
    model, processor = tiny
    assert files == RELEASE_FILES
    assert hub.check_release(out) == []
    gen = json.loads((out / "generation_config.json").read_text())
    tok = processor.tokenizer
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (tok.bos_token_id, tok.eos_token_id,
                                                                               tok.pad_token_id)
    assert json.loads((out / "tokenizer_config.json").read_text())["padding_side"] == "left"
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "eagle_vl" and "auto_map" not in config
    assert "{% generation %}" in (out / "chat_template.jinja").read_text().replace("{%- generation -%}",
                                                                                   "{% generation %}")


def test_model_card_metadata_and_expert_table(release, tiny):
    out, _ = release
    model, _ = tiny
    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0"
    assert data["base_model"] == BASE
    assert data["pipeline_tag"] == "image-text-to-text"
    assert data["library_name"] == "transformers"
    assert set(hub.DEFAULT_TAGS) <= set(data["tags"]) and "custom_code" not in data["tags"]
    counts = hub.parameter_counts(model)
    assert counts == hub.parameter_counts(out)  # counted from the folder alone (meta device)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    vision = model.config.vision_config
    for name in vision.expert_order:
        cfg = vision.expert_config(name)
        row = next(line for line in card.text.splitlines() if line.startswith(f"| `{name}` |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2:] == [f"{cfg.input_size} px", str(vision.channel_offsets[name]), str(cfg.out_channels),
                             hub.human_count(counts[f"vision_tower.{name}"])]
    grid = vision.grid_size
    assert f"| Token grid | {grid} x {grid} = {grid ** 2} tokens per image |" in card.text
    assert f"| Fused channels | {vision.hidden_size} |" in card.text
    assert hub.card_is_generated(out)


def test_model_card_snippets_run_as_written(release, tiny, tmp_path):
    """Both usage blocks of the card, executed in a fresh interpreter against the folder, print the
    answer that model.generate gives in this process."""
    out, _ = release
    model, processor = tiny
    hub.write_model_card(out, model, processor, repo_id=str(out), license="apache-2.0", base_models=BASE)
    blocks = hub.extract_python_blocks((out / "README.md").read_text())
    assert len(blocks) == 2 and all(f'"{out}"' in b for b in blocks)
    image = make_image(90, 60, seed=7)
    image.save(tmp_path / "image.jpg", quality=95)
    from PIL import Image

    expected = expected_answer(model, processor, Image.open(tmp_path / "image.jpg").convert("RGB"))
    runner = "import sys\n" + "".join(
        f"exec(compile({b!r}, 'card_block_{i}', 'exec'), {{'__name__': '__main__'}})\nsys.stdout.flush()\n"
        for i, b in enumerate(blocks))
    proc = run_python(runner, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].lstrip() == expected  # the pipeline keeps the separator space in front
    assert lines[1] == expected


def test_export_for_remote_code_files_and_auto_map(remote, tiny):
    out, files = remote
    model, processor = tiny
    assert files == sorted(RELEASE_FILES + CODE_FILES)
    assert hub.check_release(out) == []
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_eagle.EagleVLConfig",
                                  "AutoModel": "modeling_eagle.EagleVLModel",
                                  "AutoModelForImageTextToText": "modeling_eagle.EagleVLForConditionalGeneration"}
    proc_config = json.loads((out / "processor_config.json").read_text())
    assert proc_config["auto_map"] == {"AutoProcessor": "processing_eagle.EagleProcessor"}
    assert proc_config["image_processor"]["auto_map"]["AutoImageProcessor"] == \
        "image_processing_eagle.EagleImageProcessor"
    data = ModelCard.load(out / "README.md").data.to_dict()
    assert "custom_code" in data["tags"]
    # every copied module imports only siblings that were copied too
    for name in CODE_FILES:
        for line in (out / name).read_text().splitlines():
            if line.startswith("from .") or line.startswith("import ."):
                module = line.split()[1].lstrip(".")
                assert f"{module}.py" in files, (name, line)
    # register_for_auto_class was undone: an ordinary save writes no code and no auto_map
    for cls in (type(model.config), type(model), type(processor), type(processor.image_processor)):
        assert cls.__dict__.get("_auto_class") is None
    for obj in (model.config, processor, processor.image_processor):
        assert not obj.__dict__.get("auto_map")


def test_remote_code_loads_without_eagle_hf(remote, tiny, tmp_path):
    out, _ = remote
    model, processor = tiny
    image = make_image(70, 50, seed=5)
    image.save(tmp_path / "image.jpg", quality=95)
    from PIL import Image

    loaded = Image.open(tmp_path / "image.jpg").convert("RGB")
    messages = [{"role": "user", "content": [{"type": "image", "image": loaded},
                                             {"type": "text", "text": "Describe this image."}]}]
    inputs = prepare_inputs(model, processor, messages)
    with torch.inference_mode():
        logits = model(**inputs).logits
    expected = expected_answer(model, processor, loaded)
    blocks = hub.extract_python_blocks((out / "README.md").read_text().replace(REPO, str(out)))
    child = BLOCK_EAGLE_HF + textwrap.dedent(f"""
        import torch
        from PIL import Image
        from transformers import AutoModelForImageTextToText, AutoProcessor
        folder = {str(out)!r}
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
        image = Image.open("image.jpg").convert("RGB")
        messages = [{{"role": "user", "content": [{{"type": "image", "image": image}},
                                                 {{"type": "text", "text": "Describe this image."}}]}}]
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                               return_dict=True, return_tensors="pt")
        with torch.inference_mode():
            logits = model(**inputs).logits
        torch.save({{"logits": logits, "input_ids": inputs["input_ids"]}}, "remote.pt")
        mods = [type(model).__module__, type(processor).__module__, type(processor.image_processor).__module__]
        assert all(m.startswith("transformers_modules.") for m in mods), mods
        print("MODULES-OK")
    """) + "".join(f"exec(compile({b!r}, 'card_block_{i}', 'exec'), {{'__name__': '__main__'}})\n"
                   for i, b in enumerate(blocks)) + textwrap.dedent("""
        leaked = [m for m in sys.modules if m == "eagle_hf" or m.startswith("eagle_hf.")]
        assert not leaked, leaked
    """)
    proc = run_python(child, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == "MODULES-OK"
    assert lines[1].lstrip() == expected and lines[2] == expected  # the card's two snippets
    remote_out = torch.load(tmp_path / "remote.pt")
    assert torch.equal(remote_out["input_ids"], inputs["input_ids"])
    torch.testing.assert_close(remote_out["logits"], logits, rtol=1e-5, atol=1e-5)


def test_check_release_names_what_is_missing(release, tiny, tmp_path):
    model, processor = tiny
    out = tmp_path / "sharded"
    hub.save_release(model, processor, out, repo_id=REPO, max_shard_size="300KB")
    files = hub.release_files(out)
    shards = sorted(f for f in files if f.startswith("model-") and f.endswith(".safetensors"))
    assert len(shards) >= 2 and hub.WEIGHT_INDEX in files
    (out / shards[0]).unlink()
    (out / "generation_config.json").unlink()
    (out / "chat_template.jinja").unlink()
    assert hub.check_release(out) == [
        f"weight shards listed in {hub.WEIGHT_INDEX} are missing: {shards[0]}",
        "chat_template.jinja is missing",
        "generation_config.json is missing",
    ]


# ----------------------------------------------------------------------------------------------
# eagle-hf push


class FakeHfApi:
    """Records what push would send; nothing leaves the machine."""

    calls: list = []

    def __init__(self, *args, **kwargs):
        pass

    def create_repo(self, **kwargs):
        FakeHfApi.calls.append(("create_repo", kwargs))

    def create_branch(self, **kwargs):
        FakeHfApi.calls.append(("create_branch", kwargs))

    def upload_folder(self, **kwargs):
        FakeHfApi.calls.append(("upload_folder", kwargs))
        return type("CommitInfo", (), {"commit_url": f"https://hub.invalid/{kwargs['repo_id']}/commit/1"})()


@pytest.fixture
def fake_api(monkeypatch):
    import huggingface_hub

    FakeHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    return FakeHfApi


def test_push_dry_run_lists_files_and_uploads_nothing(release, fake_api, capsys):
    out, files = release
    rc = cli.main(["push", str(out), "--repo-id", "me/eagle", "--private", "--revision", "v1", "--dry-run"])
    stdout = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert stdout[0] == f"dry run: would upload {len(files)} files to me/eagle@v1 (private):"
    listed = [line.split()[0] for line in stdout[1:]]
    assert listed == files
    assert "(model card refreshed)" in next(line for line in stdout if line.split()[0] == "README.md")
    assert fake_api.calls == []


def test_push_uploads_the_checked_folder(release, fake_api, capsys):
    out, files = release
    rc = cli.main(["push", str(out), "--repo-id", "me/eagle", "--private", "--revision", "v1",
                   "--commit-message", "first release"])
    assert rc == 0, capsys.readouterr().err
    assert [name for name, _ in fake_api.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert fake_api.calls[0][1] == {"repo_id": "me/eagle", "repo_type": "model", "private": True, "exist_ok": True}
    assert fake_api.calls[1][1] == {"repo_id": "me/eagle", "repo_type": "model", "branch": "v1", "exist_ok": True}
    upload = fake_api.calls[2][1]
    assert (upload["repo_id"], upload["revision"], upload["commit_message"]) == ("me/eagle", "v1", "first release")
    assert upload["allow_patterns"] == files and Path(upload["folder_path"]) == out
    # the generated card now names the target repository in its snippets
    assert 'model="me/eagle"' in (out / "README.md").read_text()
    assert capsys.readouterr().out.startswith(f"uploaded {len(files)} files to me/eagle")


def test_push_remote_code_dry_run_lists_the_code(release, fake_api, capsys):
    out, files = release
    rc = cli.main(["push", str(out), "--repo-id", "me/eagle", "--remote-code", "--dry-run"])
    stdout = capsys.readouterr().out.splitlines()
    assert rc == 0
    n = len(files) + len(CODE_FILES)
    assert stdout[0] == f"dry run: would upload {n} files to me/eagle (public, with model code):"
    assert [line.split()[0] for line in stdout[1:]] == sorted(files + CODE_FILES)
    assert fake_api.calls == []


@pytest.mark.parametrize("case", ["missing", "incomplete", "bad_repo_id", "not_eagle"])
def test_push_refuses_bad_input(case, release, tmp_path, fake_api, capsys):
    out, _ = release
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    for name in ("config.json", "model.safetensors", "README.md"):
        (incomplete / name).write_bytes((out / name).read_bytes())
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    argv, message = {
        "missing": ([str(tmp_path / "nope"), "--repo-id", "me/x"], f"model folder {tmp_path / 'nope'} does not exist"),
        "incomplete": ([str(incomplete), "--repo-id", "me/x"],
                       f"{incomplete} is not a complete release: processor_config.json is missing (save the processor "
                       "with save_pretrained); tokenizer files are missing; tokenizer_config.json is missing; "
                       "chat_template.jinja is missing; generation_config.json is missing"),
        "bad_repo_id": ([str(out), "--repo-id", "not a repo"], "--repo-id must look like owner/name"),
        "not_eagle": ([str(bert), "--repo-id", "me/x"], "holds a 'bert' model"),
    }[case]
    rc = cli.main(["push", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0]
    assert fake_api.calls == []
