"""No fragment of a key a server quotes back reaches a failure, an exception, a log or a hook.

Against :class:`SecretsServer` (a loopback server that quotes the key where corral cuts the
text), for OpenAI, Anthropic and Gemini: every text a user or operator could see is searched
for any run of eight characters of a long random key (the fragment rule of
``docs/guarantees.md``): failure messages, ``str``/``repr``/tracebacks of raised exceptions,
every log record at DEBUG (stamina's included), everything stamina's retry hooks receive, and
the output, errors file, stdout and stderr of ``corral run``.
"""

from __future__ import annotations

import io
import json
import logging
import secrets
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
import stamina
import stamina.instrumentation

import corral
from corral._cli import amain
from corral.providers import Anthropic, Gemini, OpenAI
from corral.testing import serve

from .secrets_server import ATTACKS, Attack, SecretsServer

pytestmark = pytest.mark.anyio

# Long and new for every run: no fixture can hold it, and a cut can fall anywhere inside it.
KEY: Final = f"sk-frag-{secrets.token_hex(40)}"
FRAGMENT: Final = 8
_GRAMS: Final = frozenset(KEY[i : i + FRAGMENT] for i in range(len(KEY) - FRAGMENT + 1))
PROVIDERS: Final = ("openai", "anthropic", "gemini")
LOGGERS: Final = ("", "corral", "httpx2", "stamina")
STREAMED: Final = frozenset({"chunk", "chunk_first"})


def fragments(text: str) -> list[str]:
    """Return the runs of eight characters of the key found in *text*."""
    return [text[i : i + FRAGMENT] for i in range(len(text)) if text[i : i + FRAGMENT] in _GRAMS]


def assert_clean(texts: list[tuple[str, str]]) -> None:
    """Assert that no ``(where, text)`` pair holds a fragment of the key."""
    found = [f"{where}: {text!r:.400}" for where, text in texts if fragments(text)]
    assert not found, "a fragment of the key leaked:\n" + "\n".join(found[:10])


def exception_texts(where: str, exc: BaseException) -> list[tuple[str, str]]:
    """Return the str, repr and whole chained traceback of *exc*."""
    return [
        (f"{where} str", str(exc)),
        (f"{where} repr", repr(exc)),
        (f"{where} traceback", "".join(traceback.format_exception(exc, chain=True))),
    ]


class HookRecorder:
    """A stamina retry hook that keeps a rendering of everything it is given."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    def __call__(self, details: stamina.instrumentation.RetryDetails) -> None:
        self.texts.append(("hook details", repr(details)))
        self.texts += exception_texts("hook caused_by", details.caused_by)


@pytest.fixture
def hook() -> Iterator[HookRecorder]:
    """Record stamina's retry details, and log them the way stamina's own hook does."""
    recorder = HookRecorder()
    before = stamina.instrumentation.get_on_retry_hooks()
    stamina.instrumentation.set_on_retry_hooks(
        [recorder, stamina.instrumentation.LoggingOnRetryHook]
    )
    # Keep the attempts (one retry at least), drop the backoff sleeps.
    with stamina.set_testing(True, attempts=3, cap=True):
        yield recorder
    stamina.instrumentation.set_on_retry_hooks(before)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Capture every record at DEBUG from every logger a request passes through."""
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    caplog.handler.setLevel(logging.DEBUG)
    return caplog


def log_texts(records: list[logging.LogRecord]) -> list[tuple[str, str]]:
    """Return each record's message and its whole dict (stamina's extra fields included)."""
    texts = []
    for record in records:
        texts.append((f"log {record.name}", record.getMessage()))
        texts.append((f"log {record.name} dict", repr(record.__dict__)))
    return texts


def files_in(folder: Path) -> list[tuple[str, str]]:
    """Return the text of every file in *folder* (the job's manifest and summary included)."""
    return [(f"file {path.name}", path.read_text()) for path in folder.iterdir()]


def provider_for(name: str, url: str) -> Any:
    """Return the adapter *name* aimed at *url*, with the key."""
    if name == "openai":
        return OpenAI(url + "/v1", api_key=KEY)
    if name == "anthropic":
        return Anthropic(url, api_key=KEY)
    return Gemini(url, api_key=KEY)


def chat(name: str) -> corral.ChatRequest:
    """Return a small chat request for the model of provider *name*."""
    model = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku", "gemini": "gemini-2.0-flash"}
    return corral.ChatRequest(
        model[name], [{"role": "user", "content": "Hi"}], max_tokens=16, id="q1"
    )


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("name", PROVIDERS)
async def test_a_quoted_key_leaves_no_fragment_anywhere(
    name: str, attack: Attack, hook: HookRecorder, logs: pytest.LogCaptureFixture
) -> None:
    """A key quoted where corral cuts the text shows no 8 characters of it, anywhere."""
    server = SecretsServer(attack, name)
    texts: list[tuple[str, str]] = []
    stream = attack in STREAMED
    async with serve(server) as running:
        policy = corral.RetryPolicy(attempts=3, timeout=30)
        async with corral.Client(provider_for(name, running.url), retry=policy) as client:
            batch = await client.run([chat(name)], stream=stream)
            failure = batch.results[0]
            assert isinstance(failure, corral.Failure), failure
            texts += [("failure", repr(failure)), ("message", failure.error.message)]
            with pytest.raises(corral.RequestFailed) as raised:
                if stream:
                    async with client.complete_stream(chat(name)) as deltas:
                        async for _ in deltas:
                            pass
                else:
                    await client.complete(chat(name))
            texts += exception_texts("raised", raised.value)
    texts += log_texts(logs.records)
    texts += hook.texts
    assert server.hits >= 2
    if attack.startswith("retry"):
        # Retried: stamina saw each failure but the last.
        assert hook.texts
    assert_clean(texts)
    # The server's words are kept, only the key is masked.
    assert "********" in failure.error.message


@pytest.mark.parametrize("attack", ["retry_json", "retry_text", "ok_text"])
@pytest.mark.parametrize("name", PROVIDERS)
async def test_corral_run_writes_no_fragment(
    name: str,
    attack: Attack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    hook: HookRecorder,
    logs: pytest.LogCaptureFixture,
) -> None:
    """``corral run --api-key-env`` writes no fragment of a quoted key to any file or stream."""
    monkeypatch.setenv("CORRAL_HOSTILE_KEY", KEY)
    inp, out, errors = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    body = {"model": chat(name).model, "messages": [{"role": "user", "content": "Hi"}]}
    line = {"custom_id": "q1", "method": "POST", "url": "/v1/chat/completions", "body": body}
    inp.write_text(json.dumps({**line, "body": {**body, "max_tokens": 16}}) + "\n")
    stdout, stderr = io.StringIO(), io.StringIO()
    server = SecretsServer(attack, name)
    async with serve(server) as running:
        base = running.url + "/v1" if name == "openai" else running.url
        code = await amain(
            [
                "run",
                str(inp),
                "-o",
                str(out),
                "--errors",
                str(errors),
                "--provider",
                name,
                "--base-url",
                base,
                "--api-key-env",
                "CORRAL_HOSTILE_KEY",
                "--attempts",
                "3",
                "--no-progress",
            ],
            stdout=stdout,
            stderr=stderr,
            handle_signals=False,
        )
    assert code == 1
    captured = capsys.readouterr()
    written = errors.read_text()
    texts = [
        ("errors file", written),
        ("output file", out.read_text() if out.exists() else ""),
        ("stdout", stdout.getvalue()),
        ("stderr", stderr.getvalue()),
        ("process stdout", captured.out),
        ("process stderr", captured.err),
    ]
    texts += files_in(tmp_path)
    texts += log_texts(logs.records) + hook.texts
    assert server.hits >= (2 if attack.startswith("retry") else 1)
    assert_clean(texts)
    assert "********" in written


class CarelessAdapter:
    """A third-party adapter whose errors quote the server's body as it is, key and all."""

    name = "careless"

    def __init__(self, url: str) -> None:
        self._inner = OpenAI(url + "/v1", api_key=KEY)

    @property
    def endpoint(self) -> str:
        return self._inner.endpoint

    def build_request(self, request: corral.ChatRequest) -> Any:
        return self._inner.build_request(request)

    def parse_response(self, request: corral.ChatRequest, response: Any) -> corral.Completion:
        return self._inner.parse_response(request, response)

    def classify_error(self, response: Any) -> corral.ErrorInfo:
        text = response.content.decode()
        return corral.ErrorInfo(corral.ErrorKind.SERVER_ERROR, text, retryable=True)


async def test_a_third_party_adapter_s_raw_errors_reach_no_hook(
    hook: HookRecorder, logs: pytest.LogCaptureFixture
) -> None:
    """An adapter that does not mask the key still shows none of it to stamina or the logs."""
    server = SecretsServer("retry_text", "openai")
    async with serve(server) as running, corral.Client(CarelessAdapter(running.url)) as client:
        batch = await client.run([chat("openai")])
    failure = batch.results[0]
    assert isinstance(failure, corral.Failure)
    assert server.hits >= 2
    assert hook.texts
    assert_clean([*hook.texts, *log_texts(logs.records), ("message", failure.error.message)])
