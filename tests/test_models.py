"""Tests for the request/result values and their JSON round trip."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

import corral
from corral._models import StatisticsCollector, percentile

json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
json_objects = st.dictionaries(st.text(min_size=1, max_size=8), json_values, max_size=4)
counts = st.integers(0, 10**9)
finite = st.floats(0, 1e6, allow_nan=False, allow_infinity=False)

messages = st.builds(
    corral.Message,
    role=st.sampled_from(["system", "developer", "user", "assistant", "tool"]),
    content=st.text(max_size=40)
    | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=10)})),
    name=st.none() | st.text(min_size=1, max_size=8),
    extra=json_objects,
)
chat_requests = st.builds(
    corral.ChatRequest,
    model=st.text(min_size=1, max_size=20),
    messages=st.lists(messages, min_size=1, max_size=4),
    max_tokens=st.none() | st.integers(1, 100_000),
    temperature=st.none() | st.floats(0, 2),
    top_p=st.none() | st.floats(0, 1),
    stop=st.none() | st.lists(st.text(max_size=5), max_size=3).map(tuple),
    id=st.text(min_size=1, max_size=30),
    extra=json_objects,
)
usages = st.builds(corral.Usage, counts, counts, counts, counts, counts)
error_infos = st.builds(
    corral.ErrorInfo,
    kind=st.sampled_from(list(corral.ErrorKind)),
    message=st.text(max_size=40),
    status_code=st.none() | st.integers(100, 599),
    retryable=st.booleans(),
    retry_after_s=st.none() | finite,
    provider_code=st.none() | st.text(max_size=10),
)
completions = st.builds(
    corral.Completion,
    id=st.text(min_size=1, max_size=20),
    model=st.text(max_size=20),
    content=st.text(max_size=50),
    finish_reason=st.none() | st.sampled_from(["stop", "length", "content_filter"]),
    usage=usages,
    cost_usd=st.none() | finite,
    latency_s=finite,
    attempts=st.integers(1, 10),
    raw=json_objects,
    ttft_s=st.none() | finite,
)
failures = st.builds(
    corral.Failure,
    id=st.text(min_size=1, max_size=20),
    error=error_infos,
    attempts=st.integers(0, 10),
    latency_s=finite,
)
results = completions | failures


def _roundtrip(value: Any, cls: Any) -> Any:
    text = corral.to_json(value)
    json.loads(text)  # it is real JSON
    return corral.from_json(text, cls)


@given(chat_requests)
def test_chat_request_roundtrips(request: corral.ChatRequest) -> None:
    """A ChatRequest survives a JSON round trip unchanged."""
    assert _roundtrip(request, corral.ChatRequest) == request


@given(usages)
def test_usage_roundtrips(usage: corral.Usage) -> None:
    """Usage survives a JSON round trip unchanged."""
    assert _roundtrip(usage, corral.Usage) == usage


@given(error_infos)
def test_error_info_roundtrips(info: corral.ErrorInfo) -> None:
    """ErrorInfo survives a JSON round trip unchanged."""
    assert _roundtrip(info, corral.ErrorInfo) == info


@given(results)
def test_results_roundtrip_through_the_union(result: corral.Result) -> None:
    """A Completion or Failure read back as Result comes back as the same type and value."""
    back = _roundtrip(result, corral.Result)
    assert back == result
    assert type(back) is type(result)
    assert _roundtrip(result, type(result)) == result


@given(st.lists(results, max_size=30))
def test_batch_result_and_statistics_roundtrip(items: list[corral.Result]) -> None:
    """BatchResult and its BatchStatistics survive a JSON round trip unchanged."""
    collector = StatisticsCollector(0.0)
    for item in items:
        collector.add(item)
    batch = corral.BatchResult(tuple(items), collector.snapshot(10.0))
    assert _roundtrip(batch, corral.BatchResult) == batch
    assert _roundtrip(batch.statistics, corral.BatchStatistics) == batch.statistics


def test_messages_accept_dicts_and_keep_extra_fields() -> None:
    """Messages given as dicts become Message values with unknown keys kept in extra."""
    request = corral.ChatRequest(
        "m",
        [
            {"role": "user", "content": "hi"},
            {"role": "tool", "content": "42", "tool_call_id": "c1"},
            corral.Message("assistant", "ok"),
        ],
    )
    assert request.messages[0] == corral.Message("user", "hi")
    assert request.messages[1].extra == {"tool_call_id": "c1"}
    assert request.messages[2].role == "assistant"


def test_from_openai_keeps_unmodelled_fields_in_extra() -> None:
    """from_openai maps the modelled fields and passes every other body field through."""
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "x"}],
        "max_completion_tokens": 7,
        "temperature": 0.5,
        "stop": "END",
        "seed": 3,
        "response_format": {"type": "json_object"},
    }
    request = corral.ChatRequest.from_openai(body, id="q1")
    assert request.id == "q1"
    assert request.max_tokens == 7
    assert request.temperature == 0.5
    assert request.stop == ("END",)
    assert request.extra == {"seed": 3, "response_format": {"type": "json_object"}}


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"model": "", "messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m", "messages": []}, "messages must not be empty"),
        ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "role"),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
            "max_tokens",
        ),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "id": ""}, "id"),
    ],
)
def test_bad_requests_are_refused_with_the_field_named(
    kwargs: dict[str, Any], fragment: str
) -> None:
    """Invalid request fields raise ValueError naming the field."""
    with pytest.raises(ValueError, match=fragment):
        corral.ChatRequest(**kwargs)


def test_from_openai_names_the_missing_key() -> None:
    """A body without model or messages is refused with the missing key named."""
    with pytest.raises(ValueError, match="'messages'"):
        corral.ChatRequest.from_openai({"model": "m"})
    with pytest.raises(ValueError, match="'model'"):
        corral.ChatRequest.from_openai({"messages": []})


def test_generated_ids_are_unique() -> None:
    """Requests without an id get distinct generated ids."""
    ids = {corral.ChatRequest("m", [{"role": "user", "content": "x"}]).id for _ in range(1000)}
    assert len(ids) == 1000


def test_usage_total_and_addition() -> None:
    """total_tokens is input plus output, and usages add field by field."""
    a = corral.Usage(10, 5, cached_input_tokens=4, reasoning_tokens=2)
    b = corral.Usage(1, 1, cache_write_tokens=1)
    assert a.total_tokens == 15
    assert a + b == corral.Usage(11, 6, 4, 1, 2)


def test_statistics_count_failures_by_kind_retries_and_percentiles() -> None:
    """The collector counts kinds, retries, tokens, cost and latency percentiles exactly."""
    collector = StatisticsCollector(100.0)
    for i in range(1, 101):
        collector.add(
            corral.Completion(
                f"c{i}",
                "m",
                "",
                "stop",
                corral.Usage(2, 3),
                cost_usd=0.5,
                latency_s=float(i),
                attempts=2 if i <= 10 else 1,
            )
        )
    collector.add(corral.Failure("f1", corral.ErrorInfo("timeout", "t"), attempts=3))
    collector.add(corral.Failure("f2", corral.ErrorInfo("budget_exhausted", "b"), attempts=0))
    stats = collector.snapshot(110.0)
    assert (stats.total, stats.succeeded, stats.failed) == (102, 100, 2)
    assert stats.failures_by_kind == {"budget_exhausted": 1, "timeout": 1}
    assert stats.attempts == 100 + 10 + 3
    assert stats.retries == 10 + 2
    assert stats.usage == corral.Usage(200, 300)
    assert stats.cost_usd == pytest.approx(50.0)
    assert stats.latency_p50_s == pytest.approx(50.5)
    assert stats.latency_p99_s == pytest.approx(99.01)
    assert stats.wall_time_s == 10.0
    assert stats.throughput_rps == pytest.approx(10.2)


def test_percentile_of_nothing_is_none() -> None:
    """Percentiles of an empty sample are None, not zero."""
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0


def test_values_are_frozen() -> None:
    """Results cannot be mutated after creation."""
    c = corral.Completion("a", "m", "x", "stop", corral.Usage())
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        c.content = "y"  # type: ignore[misc]
