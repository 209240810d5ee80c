"""Request translation: one OpenAI-shaped request becomes a faithful Anthropic or Gemini request;
credentials, URLs, rate-limit headers and configuration errors."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest

import corral
from corral import LimitInfo
from corral.providers import Anthropic, Gemini, OpenAI
from corral.providers._base import InvalidResponse, decode_json

KEY = "sk-canary-42"


def chat(messages: list[dict[str, Any]], **body: Any) -> corral.ChatRequest:
    return corral.ChatRequest.from_openai({"model": "m", "messages": messages, **body}, id="t1")


def sent(request: httpx2.Request) -> Any:
    return json.loads(request.content)


# -- Anthropic ---------------------------------------------------------------------------------


def test_anthropic_refuses_a_request_without_max_tokens() -> None:
    """build_request raises InvalidRequestError naming max_tokens and the request id."""
    with pytest.raises(corral.InvalidRequestError, match=r"'t1'.*requires max_tokens"):
        Anthropic(api_key=KEY).build_request(chat([{"role": "user", "content": "hi"}]))


def test_anthropic_lifts_every_system_and_developer_message() -> None:
    """System and developer messages, wherever they are, are joined into 'system'."""
    request = chat(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "developer", "content": "Use French."},
            {"role": "assistant", "content": "salut"},
            {"role": "user", "content": "again"},
        ],
        max_tokens=10,
    )
    body = sent(Anthropic(api_key=KEY).build_request(request))
    assert body["system"] == "Be brief.\n\nUse French."
    assert body["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "salut"},
        {"role": "user", "content": "again"},
    ]


def test_anthropic_keeps_system_blocks_and_their_cache_control() -> None:
    """A system message given as parts stays a list of blocks, cache_control included."""
    part = {"type": "text", "text": "Long context", "cache_control": {"type": "ephemeral"}}
    request = chat(
        [{"role": "system", "content": [part]}, {"role": "user", "content": "q"}], max_tokens=5
    )
    body = sent(Anthropic(api_key=KEY).build_request(request))
    assert body["system"] == [part]


def test_anthropic_translates_image_parts() -> None:
    """A data: image becomes a base64 image block, an https image a url image block."""
    request = chat(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw=="}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                ],
            }
        ],
        max_tokens=5,
    )
    (message,) = sent(Anthropic(api_key=KEY).build_request(request))["messages"]
    assert message["content"] == [
        {"type": "text", "text": "What is this?"},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw=="},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


def test_anthropic_maps_openai_only_fields_and_passes_native_ones() -> None:
    """user, parallel_tool_calls and tool_choice are translated; native fields pass as they are."""
    request = chat(
        [{"role": "user", "content": "q"}],
        max_tokens=5,
        user="u-1",
        parallel_tool_calls=False,
        tool_choice={"type": "function", "function": {"name": "f"}},
        thinking={"type": "enabled", "budget_tokens": 1024},
        top_k=5,
        stream_options={"include_usage": True},
    )
    body = sent(Anthropic(api_key=KEY).build_request(request))
    assert body["metadata"] == {"user_id": "u-1"}
    assert body["tool_choice"] == {"type": "tool", "name": "f", "disable_parallel_tool_use": True}
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert body["top_k"] == 5
    assert "stream_options" not in body
    assert "stream" not in body
    assert sent(Anthropic(api_key=KEY).build_stream_request(request))["stream"] is True


def test_anthropic_tool_message_needs_its_call_id() -> None:
    """A tool message without tool_call_id cannot become a tool_result block."""
    request = chat(
        [{"role": "user", "content": "q"}, {"role": "tool", "content": "42"}], max_tokens=5
    )
    with pytest.raises(corral.InvalidRequestError, match="tool_call_id"):
        Anthropic(api_key=KEY).build_request(request)


def test_anthropic_needs_a_non_system_message() -> None:
    """A conversation of system messages only is refused before sending."""
    with pytest.raises(corral.InvalidRequestError, match="non-system"):
        Anthropic(api_key=KEY).build_request(
            chat([{"role": "system", "content": "x"}], max_tokens=5)
        )


def test_anthropic_headers_and_url() -> None:
    """x-api-key and anthropic-version go in headers; a base URL ending in /v1 is not doubled."""
    provider = Anthropic(
        "https://proxy.example.com/v1/",
        api_key=KEY,
        version="2024-01-01",
        headers={"anthropic-beta": "x"},
    )
    built = provider.build_request(chat([{"role": "user", "content": "q"}], max_tokens=5))
    assert str(built.url) == "https://proxy.example.com/v1/messages"
    assert built.headers["x-api-key"] == KEY
    assert built.headers["anthropic-version"] == "2024-01-01"
    assert built.headers["anthropic-beta"] == "x"
    assert "authorization" not in built.headers
    assert built.headers["x-client-request-id"] == "t1"
    assert KEY not in repr(provider)


def test_anthropic_reads_its_rate_limit_headers() -> None:
    """anthropic-ratelimit-* headers are read, with RFC 3339 resets counted from date."""
    response = httpx2.Response(
        200,
        headers={
            "date": "Mon, 01 Sep 2025 12:00:00 GMT",
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "49",
            "anthropic-ratelimit-requests-reset": "2025-09-01T12:00:02Z",
            "anthropic-ratelimit-output-tokens-limit": "8000",
            "anthropic-ratelimit-output-tokens-remaining": "garbage",
            "anthropic-ratelimit-output-tokens-reset": "2025-09-01T12:01:00Z",
        },
    )
    state = Anthropic(api_key=KEY).rate_limits(response)
    assert state.limits == {
        "requests": LimitInfo(50, 49, 2.0),
        "output_tokens": LimitInfo(8000, None, 60.0),
    }


# -- Gemini ------------------------------------------------------------------------------------


def test_gemini_maps_roles_and_system_instruction() -> None:
    """assistant becomes model, system and developer become systemInstruction parts."""
    request = chat(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": "Use French."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "salut"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
        ]
    )
    body = sent(Gemini(api_key=KEY).build_request(request))
    assert body == {
        "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Use French."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "hi"}]},
            {"role": "model", "parts": [{"text": "salut"}]},
            {"role": "user", "parts": [{"text": "a"}, {"text": "b"}]},
        ],
    }


def test_gemini_maps_sampling_fields_into_generation_config() -> None:
    """OpenAI sampling fields and response_format land in generationConfig; native keys win."""
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    request = chat(
        [{"role": "user", "content": "q"}],
        max_completion_tokens=50,
        temperature=0.5,
        top_p=0.8,
        stop="END",
        seed=7,
        n=2,
        presence_penalty=0.1,
        frequency_penalty=0.2,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        generationConfig={"temperature": 0.9, "topK": 40},
        safetySettings=[{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
        user="ignored",
        stream_options={"include_usage": True},
    )
    body = sent(Gemini(api_key=KEY).build_request(request))
    assert body["generationConfig"] == {
        "maxOutputTokens": 50,
        "temperature": 0.9,
        "topP": 0.8,
        "stopSequences": ["END"],
        "seed": 7,
        "candidateCount": 2,
        "presencePenalty": 0.1,
        "frequencyPenalty": 0.2,
        "responseMimeType": "application/json",
        "responseJsonSchema": schema,
        "topK": 40,
    }
    assert body["safetySettings"] == [
        {"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}
    ]
    assert set(body) == {"contents", "generationConfig", "safetySettings"}


def test_gemini_translates_image_parts() -> None:
    """A data: image becomes inlineData, an https image fileData; an unknown type is refused."""
    request = chat(
        [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                    {"fileData": {"fileUri": "gs://b/c.pdf", "mimeType": "application/pdf"}},
                ],
            }
        ]
    )
    (content,) = sent(Gemini(api_key=KEY).build_request(request))["contents"]
    assert content["parts"] == [
        {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/"}},
        {"fileData": {"fileUri": "https://example.com/a.png", "mimeType": "image/png"}},
        {"fileData": {"fileUri": "gs://b/c.pdf", "mimeType": "application/pdf"}},
    ]
    audio = chat([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}])
    with pytest.raises(corral.InvalidRequestError, match="input_audio"):
        Gemini(api_key=KEY).build_request(audio)


def test_gemini_tool_message_needs_a_known_name() -> None:
    """A tool message whose call id matches no earlier tool call has no function name."""
    request = chat(
        [{"role": "user", "content": "q"}, {"role": "tool", "tool_call_id": "nope", "content": "1"}]
    )
    with pytest.raises(corral.InvalidRequestError, match="needs a name"):
        Gemini(api_key=KEY).build_request(request)


def test_gemini_key_is_a_header_never_a_query_parameter() -> None:
    """x-goog-api-key carries the key; URLs hold the model path and, for streams, alt=sse only."""
    provider = Gemini(api_key=KEY)
    request = chat([{"role": "user", "content": "q"}])
    built = provider.build_request(request)
    stream = provider.build_stream_request(request)
    assert built.headers["x-goog-api-key"] == KEY
    assert str(built.url) == (
        "https://generativelanguage.googleapis.com/v1beta/models/m:generateContent"
    )
    assert str(stream.url) == (
        "https://generativelanguage.googleapis.com/v1beta/models/m:streamGenerateContent?alt=sse"
    )
    assert KEY not in str(built.url) + str(stream.url)


@pytest.mark.parametrize(
    ("model", "path"),
    [
        ("gemini-2.5-flash", "/v1/models/gemini-2.5-flash:generateContent"),
        ("models/gemini-2.5-pro", "/v1/models/gemini-2.5-pro:generateContent"),
        ("tunedModels/my-model", "/v1/tunedModels/my-model:generateContent"),
        ("odd:name?x", "/v1/models/odd%3Aname%3Fx:generateContent"),
    ],
)
def test_gemini_model_paths(model: str, path: str) -> None:
    """Model names get a models/ prefix unless they have one; ':' and '?' are escaped."""
    provider = Gemini("https://example.com/v1", api_key=KEY, api_version="v1")
    request = corral.ChatRequest(model, [{"role": "user", "content": "q"}])
    assert provider.build_request(request).url.raw_path.decode() == path


def test_gemini_reads_either_key_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key comes from GEMINI_API_KEY, else GOOGLE_API_KEY; neither is an error."""
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with pytest.raises(corral.ConfigurationError, match="GEMINI_API_KEY"):
        Gemini()
    monkeypatch.setenv("GOOGLE_API_KEY", "from-google")
    request = chat([{"role": "user", "content": "q"}])
    assert Gemini().build_request(request).headers["x-goog-api-key"] == "from-google"
    monkeypatch.setenv("GEMINI_API_KEY", "from-gemini")
    assert Gemini().build_request(request).headers["x-goog-api-key"] == "from-gemini"
    # A loopback server (the mock, a local gateway) needs no key.
    monkeypatch.delenv("GEMINI_API_KEY")
    monkeypatch.delenv("GOOGLE_API_KEY")
    assert "x-goog-api-key" not in Gemini("http://127.0.0.1:8000").build_request(request).headers


@pytest.mark.parametrize("provider", [OpenAI, Anthropic, Gemini])
@pytest.mark.parametrize(
    "url",
    [
        "sk-ant-api03-secret",
        "https://api.example.com/?key=sk-secret",
        "\x1fsk-secret",
        "https://api.example.com:secret/v1",
    ],
    ids=["a-key", "key-in-query", "control-character", "bad-port"],
)
def test_a_bad_base_url_is_refused_without_echoing_it(provider: Any, url: str) -> None:
    """A key passed where the base URL goes (or in its query) is refused, and not repeated."""
    with pytest.raises(corral.ConfigurationError) as info:
        provider(url, api_key=KEY)
    assert "secret" not in str(info.value)
    assert info.value.__cause__ is None or "secret" not in str(info.value.__cause__)


# -- OpenAI ------------------------------------------------------------------------------------


def test_openai_streams_ask_for_usage_unless_told_otherwise() -> None:
    """Streamed bodies set stream and include_usage; a caller's stream_options win."""
    provider = OpenAI(api_key=KEY)
    plain = chat([{"role": "user", "content": "q"}], stream_options={"include_usage": False})
    assert "stream_options" not in sent(provider.build_request(plain))
    body = sent(provider.build_stream_request(plain))
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": False}
    default = sent(provider.build_stream_request(chat([{"role": "user", "content": "q"}])))
    assert default["stream_options"] == {"include_usage": True}


def test_openai_reads_its_rate_limit_headers() -> None:
    """x-ratelimit-* headers are read; durations like 6m0s become seconds."""
    response = httpx2.Response(
        200,
        headers={
            "x-ratelimit-limit-requests": "10000",
            "x-ratelimit-remaining-requests": "9999",
            "x-ratelimit-reset-requests": "6m0s",
            "x-ratelimit-limit-tokens": "-5",
            "x-ratelimit-reset-tokens": "20ms",
        },
    )
    state = OpenAI(api_key=KEY).rate_limits(response)
    assert state.limits == {
        "requests": LimitInfo(10000, 9999, 360.0),
        "tokens": LimitInfo(None, None, 0.02),
    }
    assert not OpenAI(api_key=KEY).rate_limits(httpx2.Response(200))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"a":[1,2.5,"\xc3\xa9"]}', {"a": [1, 2.5, "é"]}),
        (b'{"a":1}\r\n  ', {"a": 1}),
        (b'  {"a":1}', {"a": 1}),
        (b'\xef\xbb\xbf{"a":1}', {"a": 1}),
        ('{"a":1}'.encode("utf-16"), {"a": 1}),
    ],
    ids=["utf-8", "trailing-space", "leading-space", "utf-8-bom", "utf-16"],
)
def test_a_json_body_decodes_as_json_loads_reads_its_bytes(body: bytes, expected: Any) -> None:
    """A body decodes to what json.loads gives for the same bytes, however it is laid out."""
    assert json.loads(body) == expected
    assert decode_json(httpx2.Response(200, content=body)) == expected


@pytest.mark.parametrize(
    "body",
    [b'{"a":1}x', b'{"a":1}{"b":2}', b'{"a":', b'{"a":"\x00unterminated', b"{", b"{}}"],
    ids=["garbage-after", "two-values", "truncated", "unterminated", "brace", "extra-brace"],
)
def test_a_body_that_is_not_one_json_value_is_an_invalid_response(body: bytes) -> None:
    """Anything after the value, or a value cut short, is InvalidResponse naming the body."""
    with pytest.raises(InvalidResponse, match="HTTP 200 body is not JSON"):
        decode_json(httpx2.Response(200, content=body))
