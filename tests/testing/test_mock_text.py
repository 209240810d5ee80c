"""The mock's pure text functions: tokenizer, answers, truncation, chunks and embeddings."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.testing._mock.text import (
    count_mock_tokens,
    embedding_vector,
    generate,
    is_reasoning_model,
    mock_answer,
    split_chunks,
)


@pytest.mark.parametrize(("text", "tokens"), [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2)])
def test_tokenizer_is_ceil_of_a_quarter(text: str, tokens: int) -> None:
    """One token per four characters, rounded up."""
    assert count_mock_tokens(text) == tokens


@pytest.mark.parametrize(
    ("prompt", "answer"),
    [
        ("What is 3 + 6?", "9"),
        ("Quick: what is -4 - 10 ?", "-14"),
        ("what is 7 * 6?", "42"),
        ("What is 12 x 12?", "144"),
    ],
)
def test_arithmetic_answers(prompt: str, answer: str) -> None:
    """Arithmetic questions anywhere in the prompt are answered with the result."""
    assert mock_answer(prompt, seed=123) == answer


@pytest.mark.parametrize(
    ("model", "reasoning"),
    [
        ("o1", True),
        ("o3-mini", True),
        ("deepseek-reasoner", True),
        ("claude-thinking", True),
        ("gpt-4o-mini", False),
        ("open-mistral", False),
    ],
)
def test_reasoning_model_names(model: str, reasoning: bool) -> None:
    """o<digit> names and names with reason/thinking are reasoning models; others are not."""
    assert is_reasoning_model(model) is reasoning


@given(st.text(max_size=200))
def test_chunks_rebuild_the_text(text: str) -> None:
    """A stream's chunks joined together are exactly the answer."""
    assert "".join(split_chunks(text)) == text


@given(
    prompt=st.text(max_size=80),
    seed=st.integers(0, 10),
    max_tokens=st.integers(1, 64),
    model=st.sampled_from(["gpt-4o-mini", "o3-mini"]),
)
def test_generation_respects_the_budget(
    prompt: str, seed: int, max_tokens: int, model: str
) -> None:
    """Visible plus reasoning output never exceeds max_tokens unless reasoning alone does."""
    generation = generate(prompt, seed=seed, model=model, max_tokens=max_tokens)
    (text,) = generation.texts
    assert generation.output_tokens == count_mock_tokens(text)
    assert mock_answer(prompt, seed).startswith(text)
    if generation.finish == ("stop",):
        assert text == mock_answer(prompt, seed)
    assert generation.output_tokens <= max(0, max_tokens - generation.reasoning_tokens)


@given(key=st.text(max_size=40), dims=st.integers(1, 64))
def test_embeddings_are_unit_length_prefixes(key: str, dims: int) -> None:
    """Vectors have unit length, and a shorter one points like the longer one's prefix."""
    short = embedding_vector(key, 0, dims)
    long = embedding_vector(key, 0, 64)
    assert math.isclose(math.fsum(v * v for v in short), 1.0, rel_tol=1e-6) or not any(short)
    norm = math.sqrt(math.fsum(v * v for v in long[:dims])) or 1.0
    assert short == pytest.approx([v / norm for v in long[:dims]], abs=1e-6)
