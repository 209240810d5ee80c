"""A server that quotes the API key it receives back, where corral cuts the text it shows.

corral keeps only the start of what a server says in some places: a body that is not a JSON
error (200 characters), a body or stream chunk that is not JSON (120), an error message that is
an object rather than a string (200). Each attack here puts a long prefix before the key, so
that the cut falls inside the key: masking whole keys after the cut would leave all but the end
of the key in a failure, a log line or a job's errors file. Served by
:func:`corral.testing.serve`, for OpenAI, Anthropic and Gemini alike.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any, Final, Literal

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

#: ``retry_json``: a retryable status whose JSON error message ends with the key.
#: ``retry_text``: a retryable status whose plain-text body has the key after 180 characters.
#: ``retry_object``: a retryable status whose error message is an object quoting the key.
#: ``ok_text``: a 200 "JSON" answer that is not JSON, the key after 100 characters.
#: ``chunk``: an event stream: one text delta, then a chunk that is not JSON, quoting the key.
#: ``chunk_first``: an event stream whose first chunk is not JSON and quotes the key.
Attack = Literal["retry_json", "retry_text", "retry_object", "ok_text", "chunk", "chunk_first"]
ATTACKS: Final[tuple[Attack, ...]] = (
    "retry_json",
    "retry_text",
    "retry_object",
    "ok_text",
    "chunk",
    "chunk_first",
)
#: The statuses the retryable attacks cycle through, one per attempt.
RETRYABLE: Final = (429, 500, 503)
_CREDENTIAL_HEADERS: Final = (b"authorization", b"x-api-key", b"x-goog-api-key", b"api-key")

# One text delta of each provider's event stream: what comes before the attack's chunk.
_FIRST_DELTA: Final[dict[str, list[tuple[str | None, dict[str, Any]]]]] = {
    "openai": [
        (None, {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}),
    ],
    "anthropic": [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "m",
                    "type": "message",
                    "role": "assistant",
                    "model": "m",
                    "content": [],
                    "usage": {"input_tokens": 3, "output_tokens": 0},
                },
            },
        ),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Hi"},
            },
        ),
    ],
    "gemini": [
        (None, {"candidates": [{"content": {"parts": [{"text": "Hi"}], "role": "model"}}]}),
    ],
}


def padding(length: int) -> str:
    """Return *length* characters of harmless words to push the key past a cut."""
    words = "the server explains at length why it refused the request "
    return (words * (length // len(words) + 1))[:length]


def credential(headers: list[tuple[bytes, bytes]]) -> str:
    """Return the key a request carried, without its auth scheme, whichever header held it."""
    for name, value in headers:
        if name.lower() in _CREDENTIAL_HEADERS:
            return value.decode().removeprefix("Bearer ")
    return ""


class SecretsServer:
    """An ASGI app that answers every request with *attack*, quoting the request's own key.

    Args:
        attack: Which of the attacks (see :data:`Attack`).
        provider: The API shape of the stream's first delta: openai, anthropic or gemini.
    """

    __slots__ = ("attack", "hits", "provider")

    def __init__(self, attack: Attack, provider: str) -> None:
        self.attack = attack
        self.provider = provider
        self.hits = 0

    def __repr__(self) -> str:
        return f"<SecretsServer {self.attack} {self.provider} hits={self.hits}>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        while (await receive()).get("more_body"):
            pass
        self.hits += 1
        status, content_type, body = self.answer(credential(scope["headers"]))
        headers = [(b"content-type", content_type.encode())]
        if status in RETRYABLE:
            headers.append((b"retry-after", b"0"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def answer(self, key: str) -> tuple[int, str, bytes]:
        """Return the status, content type and body that quote *key* as the attack says."""
        status = RETRYABLE[(self.hits - 1) % len(RETRYABLE)]
        if self.attack == "retry_json":
            message = f"{padding(300)} Incorrect API key provided: {key}"
            return status, "application/json", _error({"message": message, "type": "x"})
        if self.attack == "retry_text":
            return status, "text/plain", f"{padding(180)}{key} and more".encode()
        if self.attack == "retry_object":
            detail = {"detail": f"{padding(150)}{key}", "hint": "x"}
            return status, "application/json", _error({"message": detail, "type": "x"})
        if self.attack == "ok_text":
            return 200, "application/json", f"{padding(100)}{key} and more".encode()
        events = list(self._stream(key))
        return 200, "text/event-stream", "".join(events).encode()

    def _stream(self, key: str) -> Iterator[str]:
        if self.attack == "chunk":
            for event, data in _FIRST_DELTA[self.provider]:
                yield (f"event: {event}\n" if event else "") + f"data: {json.dumps(data)}\n\n"
        event = "event: content_block_delta\n" if self.provider == "anthropic" else ""
        yield f"{event}data: {padding(100)}{key} and more\n\n"


async def lifespan(receive: Receive, send: Send) -> None:
    """Answer the server's startup and shutdown messages."""
    while True:
        kind = (await receive())["type"]
        if kind == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif kind == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _error(error: dict[str, Any]) -> bytes:
    return json.dumps({"type": "error", "error": error}).encode()
