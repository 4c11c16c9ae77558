"""``eagle-hf serve`` (transformers' own OpenAI-compatible server) driven by the official ``openai``
client: the test starts the server on 127.0.0.1 in a subprocess, as a user would."""

import base64
import io
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.request import urlopen

import openai
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

import eagle_hf  # noqa: F401
from eagle_hf.testing import make_image


pytestmark = pytest.mark.slow  # a server / CLI subprocess: run by CI's slow pass

MAX_TOKENS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(ckpt, tmp_path_factory):
    path = ckpt[0]
    port = _free_port()
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "eagle_hf.cli", "serve", str(path), "--port", str(port),
                                 "--device", "cpu", "--dtype", "float32"], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the server did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=300)
        yield client, str(path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def reference(ckpt):
    """Greedy answers of ``generate`` in this process, for the same image and question."""
    path = ckpt[0]
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(path)

    def answer(image, question: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                               return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
        return processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    return answer


def data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def user(url: str, question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": question}]}]


def ask(client, model, messages, stream=False):
    response = client.chat.completions.create(model=model, messages=messages, max_tokens=MAX_TOKENS, temperature=0,
                                              stream=stream)
    if stream:
        return "".join(chunk.choices[0].delta.content or "" for chunk in response if chunk.choices)
    return response.choices[0].message.content


def test_chat_completion_with_a_data_url_and_a_local_file_equals_generate(server, reference, tmp_path):
    client, model = server
    image = make_image(seed=3)
    path = tmp_path / "img.png"
    image.save(path)
    expected = reference(image, "What is in this image?")
    assert expected.strip()
    assert ask(client, model, user(data_url(image), "What is in this image?")) == expected
    assert ask(client, model, user(str(path), "What is in this image?")) == expected
    # A different image gives a different answer (the image reaches the model).
    other = make_image(seed=11)
    assert ask(client, model, user(data_url(other), "What is in this image?")) == reference(other, "What is in this image?")


def test_streaming_equals_generate(server, reference):
    client, model = server
    image = make_image(seed=5)
    assert ask(client, model, user(data_url(image), "Describe this picture."), stream=True) == \
        reference(image, "Describe this picture.")


def test_eight_concurrent_requests_are_all_answered(server, reference):
    client, model = server
    images = [make_image(seed=20 + i) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(ask, client, model, user(data_url(im), "What is this?"), i % 2 == 1)
                   for i, im in enumerate(images)]
        answers = [f.result(timeout=600) for f in futures]
    assert answers == [reference(im, "What is this?") for im in images]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_malformed_requests_get_a_4xx_with_a_message_and_the_server_keeps_serving(server, reference, stream):
    client, model = server
    good = user(data_url(make_image(seed=1)), "What is this?")
    cases = {
        "bad image": (model, user("data:image/png;base64,bm90IGFuIGltYWdl", "What?"), "image"),
        "unknown model": ("no-such-model", good, "pinned"),
        "over-long prompt": (model, user(data_url(make_image(seed=1)), " ".join(["red"] * 2000)), "allows"),
    }
    for name, (model_name, messages, phrase) in cases.items():
        with pytest.raises(openai.APIStatusError) as info:
            ask(client, model_name, messages, stream=stream)
        assert 400 <= info.value.status_code < 500, name
        detail = str(info.value.body)
        assert phrase in detail.lower(), (name, detail)
    assert ask(client, model, good, stream=stream) == reference(make_image(seed=1), "What is this?")
