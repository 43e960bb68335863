"""The server (serve.py, `generate.py --serve`): the `openai` client talks to it, streaming and not; concurrent
clients are batched and get generate.py's answers; bad requests get 4xx OpenAI errors and the server goes on; a
client that leaves frees its row; the chat page works in a real headless browser."""
import contextlib
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch

from conftest import ROOT, generate

openai = pytest.importorskip("openai", reason="the openai client is a test dependency (requirements-dev.txt)")
uvicorn = pytest.importorskip("uvicorn", reason="fastapi and uvicorn serve the model (requirements.txt)")

MAX_TOKENS = 12
MODEL = "step_3"  # the checkpoint of the chat_run fixture


@contextlib.contextmanager
def serving(run: Path, *options: str):
    """The app for `generate.py --checkpoint RUN --serve OPTIONS` on a free 127.0.0.1 port, in a thread."""
    import generate as cli
    import serve

    app = serve.make_app(cli.Generator(cli.parse_args(["--checkpoint", str(run), "--serve", *options])))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(1000):
        if server.started:
            break
        time.sleep(0.01)
    assert server.started, "the server did not start in 10 s"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def server(chat_run):
    with serving(chat_run, "--max-new-tokens", str(MAX_TOKENS)) as (url, app):
        yield url, app


def client(url: str):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def answer(run: Path, prompt: str, *options: str) -> str:
    """What `generate.py --prompt` prints (without its final newline)."""
    result = generate("--checkpoint", str(run), "--prompt", prompt, "--max-new-tokens", str(MAX_TOKENS), *options)
    assert result.returncode == 0, result.stderr
    return result.stdout[:-1]


def test_the_openai_client_gets_generate_py_answers_streaming_and_not(chat_run, server):
    url, _ = server
    api = client(url)
    assert [m.id for m in api.models.list().data] == [MODEL]
    expected = answer(chat_run, "What is 2 + 3?")
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    reply = api.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=MAX_TOKENS)
    assert reply.choices[0].message.content == expected and reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.object == "chat.completion"
    assert reply.usage.prompt_tokens == len(generate_prompt(chat_run, messages))
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    chunks = list(api.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=MAX_TOKENS, stream=True,
                                              stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == reply.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == reply.usage.completion_tokens

    # sampling: the seed and top_p of generate.py; n choices drawn with seed, seed + 1, ... as --num-samples
    sampled = [answer(chat_run, "What is 2 + 3?", "--temperature", "1.0", "--top-p", "0.9", "--seed", s)
               for s in ("5", "6")]
    reply = api.chat.completions.create(model=MODEL, messages=messages, temperature=1.0, top_p=0.9, seed=5, n=2,
                                        max_tokens=MAX_TOKENS)
    assert [c.message.content for c in reply.choices] == sampled
    chunks = list(api.chat.completions.create(model=MODEL, messages=messages, temperature=1.0, top_p=0.9, seed=5, n=2,
                                              max_tokens=MAX_TOKENS, stream=True))
    pieces = [[c.choices[0].delta.content for c in chunks if c.choices[0].index == i and c.choices[0].delta.content]
              for i in range(2)]
    assert ["".join(p) for p in pieces] == sampled and len(pieces[0]) > 1  # token by token


def generate_prompt(run: Path, messages: list[dict]) -> list[int]:
    from utils.tokenizer import ChatTokenizer

    tokenizer = ChatTokenizer.load(str(run / "tokenizer"))
    return tokenizer.encode_chat([(m["role"], m["content"]) for m in messages], add_generation_prompt=True)[0]


def test_sixteen_concurrent_clients_are_batched_and_each_gets_its_own_answer(chat_run, server):
    url, app = server
    prompts = [f"What is {i} + {i % 3}?" for i in range(4)]
    expected = {p: answer(chat_run, p) for p in prompts}
    before = dict(app.state.batcher.stats)

    def one_client(k: int) -> list[tuple[str, str]]:
        api, got = client(url), []
        for r in range(3):
            prompt = prompts[(k + r) % len(prompts)]
            messages = [{"role": "user", "content": prompt}]
            if r % 2:
                stream = api.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=MAX_TOKENS,
                                                     stream=True)
                got.append((prompt, "".join(c.choices[0].delta.content or "" for c in stream if c.choices)))
            else:
                reply = api.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=MAX_TOKENS)
                got.append((prompt, reply.choices[0].message.content))
        return got

    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        results = [pair for got in pool.map(one_client, range(16)) for pair in got]
    seconds = time.perf_counter() - started
    assert len(results) == 48
    assert all(text == expected[prompt] for prompt, text in results)
    stats = app.state.batcher.stats
    assert stats["rows"] - before["rows"] == 48
    assert stats["largest_batch"] > 1 and stats["batches"] - before["batches"] < 48  # requests shared passes
    print(f"48 requests from 16 clients in {seconds:.2f} s, {stats['batches'] - before['batches']} batches")


def test_stop_strings_max_tokens_and_the_completions_endpoint(chat_run, server):
    url, _ = server
    api = client(url)
    full = answer(chat_run, "What is 1 + 1?")
    assert len(full) > 3
    stop = full[2:4]
    cut = full[:full.index(stop)]
    messages = [{"role": "user", "content": "What is 1 + 1?"}]
    reply = api.chat.completions.create(model=MODEL, messages=messages, temperature=0, stop=[stop, "never seen"])
    assert reply.choices[0].message.content == cut and reply.choices[0].finish_reason == "stop"
    stream = api.chat.completions.create(model=MODEL, messages=messages, temperature=0, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == cut
    reply = api.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=2)
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 2
    # text continuation answers on any run: the same as a text run's generate.py --prompt
    text = api.completions.create(model=MODEL, prompt="What is", temperature=0, max_tokens=5)
    assert text.object == "text_completion" and text.choices[0].finish_reason in ("stop", "length")
    streamed = api.completions.create(model=MODEL, prompt="What is", temperature=0, max_tokens=5, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == text.choices[0].text


def test_a_row_that_reaches_its_max_tokens_in_a_shared_batch_ends_for_length(chat_run, server):
    """Rows of one batch with their own max_tokens: the one that runs out first while the other goes on ends with
    finish_reason length, as alone (it was reported as a stop)."""
    import asyncio

    from serve import Row
    from utils.sampling import SamplingParams

    _, app = server
    batcher = app.state.batcher
    prompt = generate_prompt(chat_run, [{"role": "user", "content": "What is 1 + 1?"}])
    assert len(answer(chat_run, "What is 1 + 1?")) > 3  # (not stopped within 2 tokens)

    async def finished() -> dict[int, tuple[str, int]]:
        events, loop, done = asyncio.Queue(), asyncio.get_running_loop(), {}
        rows = [Row(i, batcher.generator.file, prompt, SamplingParams(max_new_tokens=limit), [],
                    batcher.generator.tokenizer.decode, events, loop) for i, limit in enumerate((2, MAX_TOKENS))]
        batcher.submit(rows)  # together: one batch
        while len(done) < 2:
            index, kind, *rest = await asyncio.wait_for(events.get(), timeout=60)
            if kind == "done":
                done[index] = tuple(rest)
        return done

    before = batcher.stats["batches"]
    done = asyncio.run(finished())
    assert batcher.stats["batches"] == before + 1 and done[0] == ("length", 2)


@pytest.fixture(scope="module")
def text_run(chat_run, tmp_path_factory) -> Path:
    """The chat run's weights as a text run (its config says prompt_mode=text)."""
    run = tmp_path_factory.mktemp("text") / "run"
    shutil.copytree(chat_run, run)
    checkpoint = torch.load(run / "step_3.pt", weights_only=True)
    checkpoint["config"]["dataset"]["prompt_mode"] = "text"
    torch.save(checkpoint, run / "step_3.pt")
    return run


def test_a_text_run_serves_completions_and_refuses_chat(text_run):
    with serving(text_run, "--max-new-tokens", str(MAX_TOKENS)) as (url, _):
        api = client(url)
        reply = api.completions.create(model=MODEL, prompt="What is 4", temperature=0)
        assert reply.choices[0].text == answer(text_run, "What is 4")
        with pytest.raises(openai.BadRequestError, match="text run"):
            api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}])


BAD = {  # body (or raw bytes) -> status, words of the message
    "malformed JSON": (b'{"messages": [', 400, "not valid JSON"),
    "not an object": (b"[1, 2]", 400, "JSON object"),
    "wrong type": ({"messages": [{"role": "user", "content": "Hi"}], "temperature": "hot"}, 400, "temperature"),
    "out of range": ({"messages": [{"role": "user", "content": "Hi"}], "top_p": 0}, 400, "top_p"),
    "no messages": ({"temperature": 0}, 400, "messages"),
    "unknown role": ({"messages": [{"role": "robot", "content": "Hi"}]}, 400, "role"),
    "assistant last": ({"messages": [{"role": "assistant", "content": "Hi"}]}, 400, "last message"),
    "unknown model": ({"model": "step_9", "messages": [{"role": "user", "content": "Hi"}]}, 404, "step_3"),
    "max_tokens": ({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 10 ** 6}, 400, "context"),
    "too long": ({"messages": [{"role": "user", "content": "many words " * 200}]}, 400, "context"),
    "greedy n": ({"messages": [{"role": "user", "content": "Hi"}], "n": 2, "temperature": 0}, 400, "identical"),
    "n too big": ({"messages": [{"role": "user", "content": "Hi"}], "n": 99}, 400, "n"),
    "stops": ({"messages": [{"role": "user", "content": "Hi"}], "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    "too large": (b'{"messages": [], "x": "' + b"x" * (1 << 20) + b'"}', 413, "bytes"),
    "seed too big": ({"messages": [{"role": "user", "content": "Hi"}], "seed": 2 ** 64}, 400, "seed"),  # (was a 500)
}


def test_bad_requests_get_4xx_openai_errors_and_the_server_keeps_serving(server):
    url, _ = server
    with httpx.Client(base_url=url, timeout=60) as http:
        for case, (body, status, words) in BAD.items():
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            response = http.post("/v1/chat/completions", content=content, headers={"Content-Type": "application/json"})
            assert response.status_code == status, (case, response.text)
            error = response.json()["error"]
            assert words in error["message"] and error["type"], (case, error)
        empty = http.post("/v1/completions", json={"prompt": "  "})
        assert empty.status_code == 400 and "empty" in empty.json()["error"]["message"]
        assert http.get("/v1/nothing").status_code == 404 and "error" in http.get("/v1/nothing").json()
        assert http.get("/v1/chat/completions").status_code == 405
        good = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}]})
        assert good.status_code == 200 and good.json()["choices"][0]["finish_reason"] in ("stop", "length")


def test_a_client_that_leaves_mid_stream_frees_its_row(server, monkeypatch):
    import serve

    url, app = server
    slow_steps = []

    def slow(*args, **kwargs):  # one token every 50 ms: the client leaves long before the end
        for tokens in stream_tokens(*args, **kwargs):
            slow_steps.append(tokens)
            time.sleep(0.05)
            yield tokens

    stream_tokens = serve.stream_tokens
    monkeypatch.setattr(serve, "stream_tokens", slow)
    batcher = app.state.batcher
    cancelled = batcher.stats["cancelled"]
    body = {"messages": [{"role": "user", "content": "What is 3 + 3?"}], "max_tokens": 40, "stream": True,
            "temperature": 1.0, "seed": 1, "stop": ["\x00"]}  # sampled: it does not end early
    with httpx.Client(base_url=url, timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            for line in response.iter_lines():  # up to the first piece of text: the row is generating
                if '"content": "' in line and '"content": ""' not in line:
                    break
        for _ in range(200):  # the batch ends soon after the client left
            if batcher.stats["cancelled"] > cancelled:
                break
            time.sleep(0.05)
        assert batcher.stats["cancelled"] == cancelled + 1
        assert len(slow_steps) < 40
        monkeypatch.setattr(serve, "stream_tokens", stream_tokens)
        good = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}]})
        assert good.status_code == 200


def test_serve_as_a_user_runs_it_and_a_puzzle_run_is_refused(chat_run, tmp_path):
    puzzle_like = tmp_path / "run"  # a run without a tokenizer, as puzzle runs are
    puzzle_like.mkdir()
    shutil.copy(chat_run / "step_3.pt", puzzle_like)
    result = generate("--checkpoint", str(puzzle_like), "--serve")
    assert result.returncode == 1 and "--serve serves chat and text runs" in result.stderr
    process = subprocess.Popen([sys.executable, "generate.py", "--checkpoint", str(chat_run), "--serve", "--port", "0",
                                "--max-new-tokens", "4"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        line = process.stdout.readline()
        url = re.search(r"at (http://127\.0\.0\.1:\d+):", line)
        assert url, line + process.stderr.read() if process.poll() is not None else line
        reply = client(url.group(1)).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
        assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens <= 4
    finally:
        process.terminate()
        process.wait(timeout=30)


# ---------------------------------------------------------------- the chat page in a real browser

def browser():
    """A headless Chromium driven by Selenium, or a skip saying what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (requirements-dev.txt)")
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver (.ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,800"):
        options.add_argument(flag)
    from selenium.webdriver.chrome.service import Service

    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.fixture(scope="module")
def two_checkpoints(chat_run, tmp_path_factory) -> Path:
    """The chat run with a second checkpoint, step_1, whose output head is negated (so it answers differently)."""
    run = tmp_path_factory.mktemp("two") / "run"
    shutil.copytree(chat_run, run)
    checkpoint = torch.load(run / "step_3.pt", weights_only=True)
    checkpoint["step"] = 1
    for state in (checkpoint["model"], checkpoint.get("ema") or {}):
        for key in [k for k in state if k.endswith("lm_head.weight")]:
            state[key] = -state[key]
    torch.save(checkpoint, run / "step_1.pt")
    return run


def wait_for(condition, what: str, timeout_s: float = 30):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_chat_page_in_a_headless_browser(two_checkpoints, tmp_path, monkeypatch):
    import serve
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = browser()
    real_stream, prompts, delay = serve.stream_tokens, [], [0.02]

    def slowed(model, batch, *args, **kwargs):  # visible streaming; records the prompts the page sent
        prompts.extend(batch)
        for tokens in real_stream(model, batch, *args, **kwargs):
            time.sleep(delay[0])
            yield tokens

    monkeypatch.setattr(serve, "stream_tokens", slowed)
    try:
        with serving(two_checkpoints, "--max-new-tokens", str(MAX_TOKENS)) as (url, app):
            driver.get(url)
            find = lambda css: driver.find_elements(By.CSS_SELECTOR, css)  # noqa: E731
            model = Select(driver.find_element(By.ID, "model"))
            wait_for(lambda: len(model.options) == 2, "the checkpoint picker")
            assert [o.text for o in model.options] == ["step_1", "step_3"]
            assert model.first_selected_option.text == "step_3"  # the one the server started with
            for field, value in (("temperature", "0"), ("max-tokens", str(MAX_TOKENS)), ("system", "Be brief.")):
                driver.find_element(By.ID, field).clear()
                driver.find_element(By.ID, field).send_keys(value)

            def say(text: str) -> tuple[str, list[str]]:
                """Send a message; (the reply, the texts the reply showed while it streamed)."""
                replies = len(find(".assistant"))
                driver.find_element(By.ID, "input").send_keys(text + "\n")
                seen = []

                def replied() -> bool:
                    if len(find(".assistant")) > replies:
                        seen.append(find(".assistant")[-1].text)
                        return driver.find_element(By.TAG_NAME, "body").get_attribute("data-busy") == "no"
                    return False
                wait_for(replied, "the reply")
                return find(".assistant")[-1].text, seen

            # a streamed reply, the same as generate.py's with that system prompt
            first, seen = say("What is 2 + 3?")
            assert first == answer(two_checkpoints, "What is 2 + 3?", "--system", "Be brief.")
            assert any(0 < len(text) < len(first) for text in seen)  # it grew token by token
            # another checkpoint, the conversation goes on: generate.py's answer to the whole history
            model.select_by_value("step_1")
            second, _ = say("What is 1 + 1?")
            conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"},
                            {"role": "assistant", "content": first}, {"role": "user", "content": "What is 1 + 1?"}]
            (tmp_path / "in.jsonl").write_text(json.dumps({"messages": conversation}) + "\n")
            result = generate("--checkpoint", str(two_checkpoints / "step_1.pt"), "--input-file",
                              str(tmp_path / "in.jsonl"), "--output-file", str(tmp_path / "out.jsonl"),
                              "--max-new-tokens", str(MAX_TOKENS))
            assert result.returncode == 0, result.stderr
            assert second == json.loads((tmp_path / "out.jsonl").read_text())["response"] != first
            assert [e.text for e in find(".user")] == ["What is 2 + 3?", "What is 1 + 1?"]
            driver.save_screenshot(str(tmp_path / "chat_page.png"))
            print(f"screenshot: {tmp_path / 'chat_page.png'}")

            # the stop button ends a reply early and frees its row on the server
            cancelled = app.state.batcher.stats["cancelled"]
            delay[0] = 0.3
            driver.find_element(By.ID, "max-tokens").clear()
            driver.find_element(By.ID, "max-tokens").send_keys("40")
            driver.find_element(By.ID, "temperature").clear()
            driver.find_element(By.ID, "temperature").send_keys("1")
            driver.find_element(By.ID, "input").send_keys("Tell a long story.\n")
            wait_for(lambda: find(".assistant")[-1].text, "a first piece of the reply")
            driver.find_element(By.ID, "stop").click()
            wait_for(lambda: driver.find_element(By.TAG_NAME, "body").get_attribute("data-busy") == "no", "the stop")
            wait_for(lambda: app.state.batcher.stats["cancelled"] > cancelled, "the server to free the row")

            # model output is shown as text, never run as HTML
            payload = "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script>"
            tokenizer = app.state.batcher.generator.tokenizer
            monkeypatch.setattr(serve, "stream_tokens", lambda _, batch, *a, **k: ([t] * len(batch)
                                                                                   for t in tokenizer.encode(payload)))
            driver.find_element(By.ID, "new-chat").click()
            reply, _ = say("Show me some HTML.")
            assert reply == payload and not find("#log img") and not find("#log script")
            assert driver.title == "TRM chat"
    finally:
        driver.quit()
