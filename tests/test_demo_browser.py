"""The web demo: its handlers (streaming, bad input, multi-turn state) without a browser, then the
real page in headless Chromium: upload an image, ask twice, see the answers, survive a bad file.

Browser requirements (Debian): ``apt-get install -y chromium chromium-driver`` and
``pip install selenium``; the test skips with the reason when one is missing.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio", reason="the web demo needs gradio (pip install 'eagle-hf[demo]')")

from eagle_hf.commands.demo import build_app, default_settings, make_handlers  # noqa: E402
from eagle_hf.inference import ChatEngine, Conversation, GenerationSettings  # noqa: E402
from eagle_hf.testing import build_tiny_checkpoint, make_image  # noqa: E402

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo-files")
    out = {"cat.png": folder / "cat.png", "dog.jpg": folder / "dog.jpg", "broken.png": folder / "broken.png"}
    make_image(96, 64, seed=11).save(out["cat.png"])
    make_image(40, 90, seed=12).save(out["dog.jpg"])
    out["broken.png"].write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    return out


def reference_answers(model, processor, turns):
    """What the model answers, greedily, to ``turns`` = [(image path or None, question), ...]."""
    engine = ChatEngine(model, processor, GenerationSettings(max_new_tokens=12, temperature=0))
    conv = Conversation()
    answers = []
    for image, question in turns:
        if image is not None:
            conv.add_image(image)
        answers.append(engine.answer(conv, question))
    return answers


# ----------------------------------------------------------------------------------------------
# handlers, no browser


def run_turn(respond, message, chat, conv, settings=(12, 0.0, 1.0)):
    return list(respond(message, chat, conv, *settings))


def test_handlers_stream_and_keep_state(ckpt, files):
    _, model, processor = ckpt
    engine = ChatEngine(model, processor)
    respond, clear = make_handlers(engine)
    expected = reference_answers(model, processor, [(files["cat.png"], "What is in the image?"),
                                                    (None, "What colour is it?")])
    conv = Conversation()
    updates = run_turn(respond, {"text": "What is in the image?", "files": [str(files["cat.png"])]}, [], conv)
    box, chat, conv, status = updates[-1]
    assert status == "" and all(u[3] == "" for u in updates)
    partial = [u[1][-1]["content"] for u in updates[1:-1]]
    assert len(partial) >= 3 and all(a and expected[0].startswith(a) for a in partial[1:])  # streamed, growing
    assert chat == [{"role": "user", "content": {"path": str(files["cat.png"])}},
                    {"role": "user", "content": "What is in the image?"},
                    {"role": "assistant", "content": expected[0]}]
    _, chat2, conv, status = run_turn(respond, {"text": "What colour is it?", "files": []}, chat, conv)[-1]
    assert status == "" and chat2[-1] == {"role": "assistant", "content": expected[1]}
    assert [m["role"] for m in conv.messages] == ["user", "assistant", "user", "assistant"]
    assert clear() == ([], Conversation(), {"text": "", "files": []}, "")


@pytest.mark.parametrize("case", ["broken_file", "same_image_twice", "empty_prompt", "bad_setting"])
def test_handlers_report_bad_input_and_change_nothing(case, ckpt, files):
    _, model, processor = ckpt
    respond, _ = make_handlers(ChatEngine(model, processor))
    conv = Conversation()
    first = {"text": "What is in the image?", "files": [str(files["cat.png"])]}
    _, chat, conv, _ = run_turn(respond, first, [], conv)[-1]
    messages_before, keys_before, chat_before = list(conv.messages), list(conv.image_keys), list(chat)
    message, settings, error = {
        "broken_file": ({"text": "and this?", "files": [str(files["dog.jpg"]), str(files["broken.png"])]},
                        (12, 0.0, 1.0),
                        "**Error:** broken.png is not an image file that can be read"),
        "same_image_twice": ({"text": "again?", "files": [str(files["cat.png"])]}, (12, 0.0, 1.0),
                             "**Error:** image cat.png is already part of this conversation"),
        "empty_prompt": ({"text": "   ", "files": [str(files["dog.jpg"])]}, (12, 0.0, 1.0),
                         "**Error:** the prompt is empty"),
        "bad_setting": ({"text": "hi", "files": []}, (12, 0.5, 0.0), "**Error:** top-p must be in (0, 1]"),
    }[case]
    updates = run_turn(respond, message, chat, conv, settings)
    assert len(updates) == 1
    box, chat_after, conv_after, status = updates[0]
    assert status.startswith(error)
    assert box == message  # handed back for editing
    assert chat_after == chat_before and conv_after.messages == messages_before
    assert conv_after.image_keys == keys_before and conv_after.pending_images == []
    # and the next good turn works
    _, chat_ok, _, status = run_turn(respond, {"text": "And now?", "files": []}, chat_after, conv_after)[-1]
    assert status == "" and chat_ok[-1]["role"] == "assistant" and chat_ok[-1]["content"]


def test_handlers_report_context_overflow(tmp_path, files):
    model, processor = build_tiny_checkpoint(tmp_path, max_position_embeddings=64)
    respond, _ = make_handlers(ChatEngine(model, processor))
    conv = Conversation()
    _, chat, conv, status = run_turn(respond, {"text": "What is in the image?", "files": [str(files["cat.png"])]},
                                     [], conv)[-1]
    assert status == ""
    _, chat2, conv2, status = run_turn(respond, {"text": "and what colour is the sky in this picture ?",
                                                 "files": []}, chat, conv)[-1]
    assert "but this model reads at most 64; start a new conversation" in status
    assert chat2 == chat and len(conv2.messages) == 2


def test_handlers_apply_the_settings(ckpt, files):
    _, model, processor = ckpt
    respond, _ = make_handlers(ChatEngine(model, processor))
    engine = ChatEngine(model, processor, GenerationSettings(max_new_tokens=3, temperature=0))
    conv = Conversation()
    conv.add_image(files["cat.png"])
    short = engine.answer(conv, "What is in the image?")
    _, chat, _, _ = run_turn(respond, {"text": "What is in the image?", "files": [str(files["cat.png"])]}, [],
                             Conversation(), settings=(3, 0.0, 1.0))[-1]
    assert chat[-1]["content"] == short and len(processor.tokenizer(short)["input_ids"]) <= 3


def test_settings_come_from_the_generation_config(ckpt):
    _, model, processor = ckpt
    assert default_settings(ChatEngine(model, processor)) == {
        "max_new_tokens": 12, "max_new_tokens_limit": 512, "temperature": 0.0, "top_p": 1.0}
    custom = default_settings(ChatEngine(model, processor, GenerationSettings(max_new_tokens=30, temperature=0.7,
                                                                              top_p=0.8)))
    assert (custom["max_new_tokens"], custom["temperature"], custom["top_p"]) == (30, 0.7, 0.8)
    assert isinstance(build_app(ChatEngine(model, processor)), gr.Blocks)


# ----------------------------------------------------------------------------------------------
# the real page in a headless browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _browser_missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    if not CHROMIUM or not CHROMEDRIVER:
        return "Debian chromium/chromium-driver are not installed (apt-get install -y chromium chromium-driver)"
    return None


@pytest.fixture(scope="module")
def demo_server(ckpt, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("demo-log") / "demo.log"
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1",
               GRADIO_TEMP_DIR=str(tmp_path_factory.mktemp("gradio-tmp")))
    with open(log, "w") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "eagle_hf.cli", "demo", "--model", str(ckpt[0]), "--port",
                                 str(port), "--device", "cpu"], stdout=handle, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the demo exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            time.sleep(1)
    else:
        proc.terminate()
        pytest.fail(f"the demo did not answer on {url} within 180 s:\n{log.read_text()[-3000:]}")
    yield url, proc, log
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def browser():
    missing = _browser_missing()
    if missing:
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1100"):
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="eagle-hf-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _artifact(name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    ignore = ARTIFACTS / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")  # screenshots are test outputs, never committed
    return ARTIFACTS / name


@pytest.mark.browser
def test_demo_in_headless_chromium(browser, demo_server, ckpt, files):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from selenium.common.exceptions import StaleElementReferenceException

    url, server, log = demo_server
    _, model, processor = ckpt
    expected = reference_answers(model, processor, [(files["cat.png"], "What is in the image?"),
                                                    (None, "What colour is it?")])
    wait = WebDriverWait(browser, 90, poll_frequency=0.25, ignored_exceptions=[StaleElementReferenceException])

    def bot_messages():
        return [e.text.strip() for e in browser.find_elements(By.CSS_SELECTOR, "#chatbot [data-testid='bot']")]

    def idle(d):
        """The answer is complete: the message box is editable again."""
        return d.find_element(By.CSS_SELECTOR, "#prompt textarea").is_enabled()

    def ask(question, image=None):
        if image is not None:
            upload = browser.find_element(By.CSS_SELECTOR, "#prompt input[type='file']")
            # chromedriver adds to the selection of a `multiple` file input instead of replacing it
            # (a person's file dialog replaces it), so start from an empty selection.
            browser.execute_script("arguments[0].value = ''", upload)
            upload.send_keys(str(image))
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#prompt .thumbnail-item img")) == 1)
        box = browser.find_element(By.CSS_SELECTOR, "#prompt textarea")
        box.send_keys(question)
        box.send_keys(Keys.ENTER)

    browser.get(url)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#prompt textarea"))
    assert "EAGLE" in browser.title
    assert "experts: clip, convnext, sam, pix2struct, eva" in browser.find_element(By.TAG_NAME, "body").text

    ask("What is in the image?", files["cat.png"])
    wait.until(lambda d: bot_messages() == expected[:1] and idle(d))
    assert browser.find_elements(By.CSS_SELECTOR, "#chatbot [data-testid='user'] img")  # the upload is shown

    ask("What colour is it?")
    wait.until(lambda d: bot_messages() == expected and idle(d))
    browser.find_element(By.CSS_SELECTOR, "#settings button").click()  # open the settings panel
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#max_new_tokens input[type='number']").is_displayed())
    values = {name: browser.find_element(By.CSS_SELECTOR, f"#{name} input[type='number']").get_attribute("value")
              for name in ("max_new_tokens", "temperature", "top_p")}
    assert values == {"max_new_tokens": "12", "temperature": "0", "top_p": "1"}
    browser.save_screenshot(str(_artifact("demo_chat.png")))

    # a broken upload: a clear message, nothing lost, and the page still answers
    ask("And this one?", files["broken.png"])
    wait.until(lambda d: "broken.png is not an image file that can be read" in d.find_element(By.ID, "status").text
               and idle(d))
    browser.save_screenshot(str(_artifact("demo_bad_file.png")))
    assert bot_messages() == expected
    assert server.poll() is None
    # the refused message is handed back for editing: drop the file, rewrite the question
    assert browser.find_element(By.CSS_SELECTOR, "#prompt textarea").get_attribute("value") == "And this one?"
    browser.find_element(By.CSS_SELECTOR, "#prompt .thumbnail-item .delete-button").click()
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#prompt .thumbnail-item"))
    box = browser.find_element(By.CSS_SELECTOR, "#prompt textarea")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    ask("Is it big?")
    wait.until(lambda d: len(bot_messages()) == 3 and idle(d) and d.find_element(By.ID, "status").text == "")
    answers = bot_messages()
    assert answers[:2] == expected and answers[2]

    # Clear forgets the conversation: the first question gets its first answer again
    browser.find_element(By.ID, "clear").click()
    wait.until(lambda d: bot_messages() == [])
    ask("What is in the image?", files["cat.png"])
    wait.until(lambda d: bot_messages() == expected[:1] and idle(d))
