"""Deterministic text, token counts and embeddings for the mock server.

Everything here is a pure function of its arguments and the seed, so a test can recompute what
the server will answer: `count_mock_tokens` is the tokenizer, `mock_answer` the text.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import math
import random
import re
import struct
from collections.abc import Sequence
from typing import Final

import attrs

__all__ = [
    "Generation",
    "count_mock_tokens",
    "embedding_vector",
    "encode_vector",
    "generate",
    "is_reasoning_model",
    "mock_answer",
    "split_chunks",
]

#: Characters per token of the mock tokenizer.
CHARS_PER_TOKEN: Final = 4

#: A first message (or system prompt) this long, in tokens, is cached by the mock server.
CACHE_MIN_TOKENS: Final = 1024

_ARITHMETIC = re.compile(r"what\s+is\s+(-?\d+)\s*([-+*x×])\s*(-?\d+)\s*\?", re.IGNORECASE)
_REASONING = re.compile(r"^o\d|reason|thinking", re.IGNORECASE)
_CHUNK = re.compile(r"\s*\S+\s*|\s+")

# Plain words, so that answers look like prose in logs and demos; one string keeps it compact.
_WORDS: Final = (  # noqa: SIM905
    "the a an of to in on for with from by about across after before under over between "
    "model answer system request token stream batch limit budget window retry signal value "
    "quiet rapid steady bright simple careful early late clear small large useful gentle "
    "river mountain garden harbor lantern meadow orchard valley canyon island forest desert "
    "reads writes builds checks counts finds keeps moves sends holds turns waits "
    "today again often always rarely slowly quickly together apart almost"
).split()


def count_mock_tokens(text: str) -> int:
    """Count tokens the way the mock server does: one per four characters, rounded up.

    Args:
        text: Any text: a message, a system prompt or an answer.
    """
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def is_reasoning_model(model: str) -> bool:
    """Tell whether the mock treats `model` as a reasoning model that reports reasoning tokens.

    Names that start with "o" and a digit (o1, o3-mini) or contain "reason" or "thinking" are.

    Args:
        model: The model name of the request.
    """
    return _REASONING.search(model) is not None


def _seeded(seed: int, *parts: object) -> random.Random:
    # str seeds go through SHA-512, so the stream does not depend on PYTHONHASHSEED.
    return random.Random("\x1f".join([str(seed), *map(str, parts)]))


def mock_answer(prompt: str, seed: int, index: int = 0) -> str:
    """Return the mock server's full answer to `prompt`, before any ``max_tokens`` truncation.

    "What is A + B?" (also -, * and x) is answered with the result; anything else gets a
    pseudo-sentence derived from the prompt, the seed and the choice index.

    Args:
        prompt: The text of the last user message.
        seed: The server's seed.
        index: The choice index, for requests that ask for several choices.
    """
    match = _ARITHMETIC.search(prompt)
    if match is not None:
        left, op, right = int(match[1]), match[2], int(match[3])
        if op == "+":
            return str(left + right)
        if op == "-":
            return str(left - right)
        return str(left * right)
    rng = _seeded(seed, "answer", index, prompt)
    words = rng.choices(_WORDS, k=rng.randint(8, 32))
    return " ".join(words).capitalize() + "."


def _reasoning_tokens(prompt: str, seed: int) -> int:
    return _seeded(seed, "reasoning", prompt).randint(8, 32)


def split_chunks(text: str) -> list[str]:
    """Split `text` into the pieces a stream sends: each word with the spaces around it.

    Args:
        text: The answer to stream.
    """
    return _CHUNK.findall(text)


@attrs.frozen
class Generation:
    """What the mock model produced for one request.

    Attributes:
        texts: The visible answer of each choice, already truncated to the token budget.
        finish: ``"stop"`` or ``"length"`` for each choice.
        output_tokens: Visible output tokens, summed over choices.
        reasoning_tokens: Hidden reasoning tokens, summed over choices.
        thinking: Text of a thinking block (only when the request asked for one).
    """

    texts: tuple[str, ...]
    finish: tuple[str, ...]
    output_tokens: int
    reasoning_tokens: int
    thinking: str = ""


@functools.lru_cache(maxsize=4096)
def generate(
    prompt: str,
    *,
    seed: int,
    model: str,
    max_tokens: int | None,
    choices: int = 1,
    thinking: bool = False,
) -> Generation:
    """Produce the answers, their finish reasons and honest token counts.

    Reasoning tokens (for reasoning models, or when the request turned thinking on) are spent
    first and count against `max_tokens`, as they do on the real APIs. Results are cached: the
    same request is answered without recomputing.

    Args:
        prompt: The text of the last user message.
        seed: The server's seed.
        model: The requested model.
        max_tokens: The output budget per choice, or None for no limit.
        choices: How many choices to produce.
        thinking: Whether the request turned extended thinking on.
    """
    reasoning = _reasoning_tokens(prompt, seed) if thinking or is_reasoning_model(model) else 0
    texts: list[str] = []
    finish: list[str] = []
    for index in range(choices):
        text = mock_answer(prompt, seed, index)
        reason = "stop"
        if max_tokens is not None:
            budget = max(0, max_tokens - reasoning)
            if count_mock_tokens(text) > budget:
                text = text[: budget * CHARS_PER_TOKEN]
                reason = "length"
        texts.append(text)
        finish.append(reason)
    thought = ""
    if thinking and reasoning:
        thought = mock_answer("thinking about " + prompt, seed)[: reasoning * CHARS_PER_TOKEN]
    return Generation(
        texts=tuple(texts),
        finish=tuple(finish),
        output_tokens=sum(map(count_mock_tokens, texts)),
        reasoning_tokens=reasoning * choices,
        thinking=thought,
    )


def embedding_vector(key: str, seed: int, dimensions: int) -> list[float]:
    """Return a unit-length vector derived from a hash of `key`.

    A shorter vector is a renormalised prefix of a longer one, as with Matryoshka embeddings, so
    asking for fewer ``dimensions`` keeps the leading components' directions.

    Args:
        key: The input text (or a canonical form of a token list).
        seed: The server's seed.
        dimensions: The vector's length.
    """
    raw = hashlib.shake_256(f"{seed}\x1f{key}".encode()).digest(2 * dimensions)
    values = struct.unpack(f"<{dimensions}h", raw)
    norm = math.sqrt(sum(value * value for value in values)) or 1.0
    return [round(value / norm, 8) for value in values]


def encode_vector(vector: Sequence[float]) -> str:
    """Encode a vector as OpenAI's ``encoding_format="base64"`` does: little-endian float32.

    Args:
        vector: The embedding.
    """
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
