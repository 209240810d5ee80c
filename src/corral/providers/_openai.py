"""The OpenAI-compatible chat completions adapter (OpenAI, DeepSeek, vLLM, SGLang, ...)."""

from __future__ import annotations

from typing import Any, Final

import httpx2

from .. import __version__
from .._models import ChatRequest, Completion, ErrorInfo, ErrorKind, Usage
from .._secret import Secret
from ._base import InvalidResponse, decode_json, encode_json, error_info, resolve_key

__all__ = ["OpenAI"]

DEFAULT_BASE_URL: Final = "https://api.openai.com/v1"

_CONTEXT_CODES: Final = frozenset({"context_length_exceeded", "string_above_max_length"})
_FILTER_CODES: Final = frozenset({"content_filter", "content_policy_violation"})


class OpenAI:
    """Speak the OpenAI ``/chat/completions`` API, or any server compatible with it.

    Args:
        base_url: The API root, up to and including the version (``.../v1``).
        api_key: The key; read from *api_key_env* when not given. Loopback servers need none.
        api_key_env: The environment variable that holds the key.
        organization: Sent as ``OpenAI-Organization`` when given.
        project: Sent as ``OpenAI-Project`` when given.
        headers: Extra headers for every request (never put secrets here: use *api_key*).
    """

    __slots__ = ("_api_key", "_base_url", "_chat_url", "_static_headers")

    name = "openai"

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        api_key: str | Secret | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        organization: str | None = None,
        project: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._api_key = resolve_key(api_key, api_key_env, self._base_url, "OpenAI")
        self._chat_url = httpx2.URL(self._base_url + "/chat/completions")
        static = {
            "content-type": "application/json",
            "accept": "application/json",
            "user-agent": f"corral/{__version__}",
        }
        if organization:
            static["openai-organization"] = organization
        if project:
            static["openai-project"] = project
        static.update({k.lower(): v for k, v in (headers or {}).items()})
        self._static_headers = static

    def __repr__(self) -> str:
        return f"OpenAI(base_url={self._base_url!r}, api_key={self._api_key!r})"

    @property
    def endpoint(self) -> str:
        """The API root this adapter talks to."""
        return self._base_url

    def body(self, request: ChatRequest) -> dict[str, Any]:
        """Return the JSON body for *request*.

        Args:
            request: The request.
        """
        messages = []
        for m in request.messages:
            msg: dict[str, Any] = {"role": m.role, "content": m.content}
            if m.name is not None:
                msg["name"] = m.name
            if m.extra:
                msg.update(m.extra)
            messages.append(msg)
        body: dict[str, Any] = {"model": request.model, "messages": messages}
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop is not None:
            body["stop"] = list(request.stop)
        if request.extra:
            body.update(request.extra)
        return body

    def build_request(self, request: ChatRequest) -> httpx2.Request:
        """Build the POST to ``/chat/completions`` for *request*.

        Args:
            request: The request.
        """
        headers = dict(self._static_headers)
        key = self._api_key.reveal()
        if key:
            headers["authorization"] = f"Bearer {key}"
        if request.id.isascii() and len(request.id) <= 512:
            # OpenAI echoes this id in its logs; the mock server uses it to count hits per id.
            headers["x-client-request-id"] = request.id
        return httpx2.Request(
            "POST", self._chat_url, headers=headers, content=encode_json(self.body(request))
        )

    def parse_response(self, request: ChatRequest, response: httpx2.Response) -> Completion:
        """Parse a chat completion.

        Args:
            request: The request that was sent.
            response: The read 2xx response.
        """
        data = decode_json(response)
        try:
            choice = data["choices"][0]
            message = choice.get("message") or {}
            content = message.get("content")
            if content is None:
                content = ""
            if not isinstance(content, str):
                raise InvalidResponse("choices[0].message.content is not a string")
            usage = parse_usage(data.get("usage"))
            return Completion(
                id=request.id,
                model=str(data.get("model") or request.model),
                content=content,
                finish_reason=choice.get("finish_reason"),
                usage=usage,
                raw=data,
            )
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            raise InvalidResponse(f"not a chat completion: {exc!r}") from exc

    def classify_error(self, response: httpx2.Response) -> ErrorInfo:
        """Describe an OpenAI error response.

        Args:
            response: The read non-2xx response.
        """
        message = f"HTTP {response.status_code}"
        code: str | None = None
        try:
            data = response.json()
            err = data.get("error") if isinstance(data, dict) else None
            if isinstance(err, dict):
                message = str(err.get("message") or message)
                raw_code = err.get("code") or err.get("type")
                code = str(raw_code) if raw_code is not None else None
            elif isinstance(err, str):
                message = err
        except ValueError:
            text = response.text[:200].strip()
            if text:
                message = f"{message}: {text}"
        kind = None
        if code in _CONTEXT_CODES:
            kind = ErrorKind.CONTEXT_LENGTH
        elif code in _FILTER_CODES:
            kind = ErrorKind.CONTENT_FILTER
        elif response.status_code == 429 and code == "insufficient_quota":
            kind = ErrorKind.QUOTA_EXHAUSTED
        info = error_info(response, message, provider_code=code, kind_override=kind)
        if kind is ErrorKind.QUOTA_EXHAUSTED:
            # More attempts cannot help until the account is topped up.
            info = ErrorInfo(
                info.kind, info.message, info.status_code, False, info.retry_after_s,
                info.provider_code,
            )
        return info


def parse_usage(raw: Any) -> Usage:
    """Normalise an OpenAI ``usage`` object.

    Args:
        raw: The ``usage`` object, or None.
    """
    if not isinstance(raw, dict):
        return Usage()
    prompt_details = raw.get("prompt_tokens_details") or {}
    completion_details = raw.get("completion_tokens_details") or {}
    return Usage(
        input_tokens=int(raw.get("prompt_tokens") or 0),
        output_tokens=int(raw.get("completion_tokens") or 0),
        cached_input_tokens=int(prompt_details.get("cached_tokens") or 0),
        reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
    )
