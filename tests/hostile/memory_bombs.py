"""Hostile servers that try to take a client's memory: endless heads, huge bodies, bombs.

Each one is a raw loopback server speaking OpenAI's chat completions. It answers every request
honestly, except those whose prompt is ``"attack"``: those get the attack. Every server counts
the bytes it managed to hand to the client, so a test can assert that the client stopped
reading early (a deterministic figure, unlike a process's memory).
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable

import anyio
import attrs
import brotli

from ..scripted import completion_body
from ..transport.transport_helpers import Handler, Peer, Received, http_response

ATTACK = "attack"


@attrs.define
class Tally:
    """What a hostile server did: attacks made, bytes the client accepted, answers given."""

    attacks: int = 0
    sent: int = 0
    answered: int = 0


def is_attack(request: Received) -> bool:
    """Return whether a request's prompt asks for the attack."""
    try:
        body = json.loads(request.body)
        return bool(body["messages"][-1]["content"] == ATTACK)
    except (ValueError, KeyError, IndexError, TypeError):
        return False


def honest_answer(request: Received) -> bytes:
    """Return a correct chat completion for *request*."""
    model = json.loads(request.body).get("model", "m")
    body = json.dumps(completion_body(model, "fine")).encode()
    return http_response(200, body, [("content-type", "application/json")])


async def send_counted(peer: Peer, tally: Tally, data: bytes) -> None:
    """Send *data*, counting it once the client's socket took it."""
    await peer.send(data)
    tally.sent += len(data)


def hostile(
    attack: Callable[[Peer, Tally], object], tally: Tally, *, then_answer: bool = False
) -> Handler:
    """Return a handler answering honestly except for attack requests.

    Args:
        attack: Coroutine function run on the connection for an attack request.
        tally: Where the server counts what it did.
        then_answer: Whether the attack leaves the connection usable for the next request.
    """

    async def handle(peer: Peer) -> None:
        while (request := await peer.read_request()) is not None:
            if is_attack(request):
                tally.attacks += 1
                await attack(peer, tally)  # type: ignore[misc]
                if not then_answer:
                    return
            else:
                tally.answered += 1
                await peer.send(honest_answer(request))

    return handle


HEAD_200 = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"


async def endless_headers(peer: Peer, tally: Tally) -> None:
    """Send a 200 status line, then header after header, never ending the head."""
    await send_counted(peer, tally, HEAD_200)
    line = b"x-filler: " + b"a" * 1000 + b"\r\n"
    block = line * 64
    while True:
        await send_counted(peer, tally, block)


async def endless_header_line(peer: Peer, tally: Tally) -> None:
    """Send a 200 status line, then one header line that never ends."""
    await send_counted(peer, tally, HEAD_200 + b"x-long: ")
    block = b"b" * 65_536
    while True:
        await send_counted(peer, tally, block)


async def endless_body(peer: Peer, tally: Tally) -> None:
    """Send a chunked 200 whose body never ends (a JSON string that keeps growing)."""
    await send_counted(peer, tally, HEAD_200 + b"transfer-encoding: chunked\r\n\r\n")
    await send_counted(peer, tally, b'3\r\n["x\r\n')
    chunk = b"c" * 65_536
    framed = b"%x\r\n%b\r\n" % (len(chunk), chunk)
    while True:
        await send_counted(peer, tally, framed)


def sized_body(size: int) -> Callable[[Peer, Tally], object]:
    """Return an attack sending a 200 with a Content-Length of *size* and that many bytes."""

    async def attack(peer: Peer, tally: Tally) -> None:
        await send_counted(peer, tally, HEAD_200 + b"content-length: %d\r\n\r\n" % size)
        chunk = b"d" * 65_536
        left = size
        while left > 0:
            piece = chunk[: min(left, len(chunk))]
            await send_counted(peer, tally, piece)
            left -= len(piece)

    return attack


def bomb(coding: str, decoded_size: int) -> Callable[[Peer, Tally], object]:
    """Return an attack sending a small compressed 200 that decodes to *decoded_size* bytes.

    The request never asked for compression (no Accept-Encoding).
    """
    zeros = b"0" * decoded_size
    if coding == "gzip":
        payload = gzip.compress(zeros, compresslevel=9)
    elif coding == "deflate":
        payload = zlib.compress(zeros, 9)
    else:
        payload = brotli.compress(zeros, quality=11)
    response = http_response(
        200, payload, [("content-type", "application/json"), ("content-encoding", coding)]
    )

    async def attack(peer: Peer, tally: Tally) -> None:
        await send_counted(peer, tally, response)

    return attack


STALE = "stale"


def extra_response(*, apart: bool = False) -> Callable[[Peer, Tally], object]:
    """Return an attack answering, then sending a second, unasked answer.

    A client that reads the extra response as the answer to its next request on the same
    connection delivers a stale answer (content ``"stale"``) to the wrong request.

    Args:
        apart: Send the extra response a moment later, in its own segment (the client reads
            it from an idle connection), instead of in the same send as the answer.
    """
    stale_body = json.dumps(completion_body("m", STALE)).encode()
    stale = http_response(200, stale_body, [("content-type", "application/json")])

    async def attack(peer: Peer, tally: Tally) -> None:
        body = json.dumps(completion_body("m", "first")).encode()
        answer = http_response(200, body, [("content-type", "application/json")])
        if apart:
            await send_counted(peer, tally, answer)
            await anyio.sleep(0.05)
            await send_counted(peer, tally, stale)
        else:
            await send_counted(peer, tally, answer + stale)

    return attack


__all__ = [
    "ATTACK",
    "HEAD_200",
    "STALE",
    "Tally",
    "bomb",
    "endless_body",
    "endless_header_line",
    "endless_headers",
    "extra_response",
    "honest_answer",
    "hostile",
    "is_attack",
    "sized_body",
]
