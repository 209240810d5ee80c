"""Streamed completions: read server-sent events, feed the provider's parser, time the deltas.

The events come from httpx2's SSE reader (:class:`httpx2.EventSource`); the provider's
:class:`~corral.providers.StreamParser` turns them into text deltas and, at the final event, a
:class:`corral.Completion`. Time to first token and the gaps between deltas are read from
``anyio.current_time()``, so virtual clocks drive them in tests.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, cast

import anyio
import attrs
import httpx2

from ._errors import RequestFailed, exception_for
from ._flow.retry import classify_exception
from ._models import Completion, ErrorInfo, ErrorKind
from ._secret import scrub
from .providers._base import InvalidResponse, ProviderError, StreamParser

if TYPE_CHECKING:
    from collections.abc import Callable

# EventReader and stream_failure are the client's machinery, not public API.
__all__ = ["CompletionStream", "StreamStatistics"]


def stream_failure(exc: BaseException) -> ErrorInfo | None:
    """Return the failure an exception raised while reading a stream stands for.

    None means the exception is not an expected failure (a bug, or cancellation) and must
    propagate.

    Args:
        exc: The exception.
    """
    if isinstance(exc, _Idle):
        return ErrorInfo(
            ErrorKind.TIMEOUT,
            f"no stream event within request_timeout={exc.timeout:g}s",
            retryable=True,
        )
    if isinstance(exc, ProviderError):
        return exc.info
    if isinstance(exc, InvalidResponse):
        return ErrorInfo(ErrorKind.INVALID_RESPONSE, str(exc))
    if isinstance(exc, httpx2.SSEError):
        # httpx2 files it under TransportError, but a malformed event stream is the server's
        # answer, not a broken connection.
        return ErrorInfo(ErrorKind.INVALID_RESPONSE, f"bad event stream: {scrub(str(exc))}")
    if isinstance(exc, httpx2.HTTPError | OSError):
        return classify_exception(exc)
    return None


class _Idle(Exception):
    """No event came within the idle timeout (keep-alive comments are not events)."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"no stream event within {timeout:g}s")
        self.timeout = timeout


class EventReader:
    """One open streamed response: events in, text deltas out, timed.

    Owns the response; :meth:`aclose` must be called, and is safe to call more than once.

    Args:
        response: The 2xx ``text/event-stream`` response, opened with ``stream=True``.
        parser: The provider's parser for this attempt.
        start: The request's start on ``anyio.current_time()``'s clock; TTFT counts from it.
        idle_timeout: The most seconds between two events (the client's ``request_timeout``);
            a server that sends only keep-alive comments for longer fails as ``timeout``.
    """

    __slots__ = (
        "_bytes",
        "_closed",
        "_events",
        "_first",
        "_gaps",
        "_idle_timeout",
        "_last",
        "_parser",
        "_pending",
        "_response",
        "_start",
        "_whole",
    )

    def __init__(
        self,
        response: httpx2.Response,
        parser: StreamParser,
        start: float,
        *,
        idle_timeout: float = math.inf,
    ) -> None:
        self._response = response
        self._idle_timeout = idle_timeout
        self._parser = parser
        self._start = start
        self._events: AsyncGenerator[httpx2.ServerSentEvent] | None = None
        self._bytes: AsyncGenerator[bytes] | None = None
        self._pending: str | None = None
        self._whole: Completion | None = None
        self._first: float | None = None
        self._last = start
        self._gaps: list[float] = []
        self._closed = False

    @classmethod
    def whole(cls, response: httpx2.Response, completion: Completion, start: float) -> EventReader:
        """Wrap a server's non-streamed answer to a streamed request as a one-delta stream.

        Some OpenAI-compatible servers ignore ``stream: true``; their JSON answer is still a
        good completion.

        Args:
            response: The read response.
            completion: Its parsed completion.
            start: The request's start.
        """
        reader = cls(response, _NoParser(), start)
        reader._whole = completion
        if completion.content:
            reader._mark()
            reader._pending = completion.content
        return reader

    def __repr__(self) -> str:
        return f"<EventReader parser={self._parser!r} deltas={self.deltas} closed={self._closed}>"

    @property
    def ttft_s(self) -> float | None:
        """Seconds from the request's start to the first delta, once it came."""
        return self._first

    @property
    def deltas(self) -> int:
        """Text deltas read so far."""
        return 0 if self._first is None else len(self._gaps) + 1

    def _mark(self) -> None:
        now = anyio.current_time()
        if self._first is None:
            self._first = now - self._start
        else:
            self._gaps.append(now - self._last)
        self._last = now

    async def prime(self) -> None:
        """Read up to the first text delta (or the end) and keep it for :meth:`next_delta`.

        Errors up to this point happen before anything reached the caller, so the client may
        still retry them.
        """
        self._pending = await self._read()

    async def next_delta(self) -> str | None:
        """Return the next text delta, or None at the end of the stream."""
        if self._pending is not None:
            delta, self._pending = self._pending, None
            return delta
        if self._whole is not None:
            return None
        return await self._read()

    async def _read(self) -> str | None:
        if self._events is None:
            self._bytes = self._response.aiter_bytes()
            view = cast("httpx2.Response", _EventSourceView(self._response, self._bytes))
            # EventSource's iterator is an async generator: keep it to close it explicitly.
            self._events = cast(
                "AsyncGenerator[httpx2.ServerSentEvent]", aiter(httpx2.EventSource(view))
            )
        events = self._events
        timeout = self._idle_timeout
        while True:
            if timeout == math.inf:
                event = await anext(events, None)
            else:
                # Comments (": ping") keep the connection busy but are no event: each event
                # must come within the timeout of the one before.
                with anyio.move_on_after(timeout) as scope:
                    event = await anext(events, None)
                if scope.cancelled_caught:
                    raise _Idle(timeout)
            if event is None:
                return None
            delta = self._parser.feed(event)
            if delta:
                self._mark()
                return delta

    def completion(self) -> Completion:
        """Return the completion, with ``ttft_s`` and the gaps; raise when it was truncated."""
        completion = self._whole if self._whole is not None else self._parser.result()
        return attrs.evolve(completion, ttft_s=self._first, inter_token_gaps_s=tuple(self._gaps))

    async def aclose(self) -> None:
        """Close the event reader and the response; shielded, so it also runs when cancelled."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            try:
                if self._events is not None:
                    await self._events.aclose()
                if self._bytes is not None:
                    await self._bytes.aclose()
            finally:
                await self._response.aclose()


class _EventSourceView:
    """What :class:`httpx2.EventSource` reads of a response: headers, request and text.

    EventSource iterates ``response.aiter_text()``, an async generator that it never closes;
    one abandoned mid-stream (a cancellation, an early exit) is left to the garbage collector,
    which finalises it late and, on trio, with a ResourceWarning. This view gives EventSource a
    plain iterator over a byte generator that :class:`EventReader` owns and closes itself.
    """

    __slots__ = ("_chunks", "_response")

    def __init__(self, response: httpx2.Response, chunks: AsyncIterator[bytes]) -> None:
        self._response = response
        self._chunks = chunks

    @property
    def headers(self) -> httpx2.Headers:
        return self._response.headers

    @property
    def request(self) -> httpx2.Request:
        return self._response.request

    def aiter_text(self) -> _Utf8Text:
        return _Utf8Text(self._chunks)


class _Utf8Text:
    """Decode a byte iterator as UTF-8 text (the only encoding event streams use)."""

    __slots__ = ("_chunks", "_decoder", "_ended")

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._ended = False

    def __aiter__(self) -> _Utf8Text:
        return self

    async def __anext__(self) -> str:
        while not self._ended:
            try:
                data = await anext(self._chunks)
            except StopAsyncIteration:
                self._ended = True
                tail = self._decoder.decode(b"", final=True)
                if tail:
                    return tail
                break
            text = self._decoder.decode(data)
            if text:
                return text
        raise StopAsyncIteration


class _NoParser:
    """The parser of a stream that was answered whole; never fed."""

    __slots__ = ()

    @property
    def done(self) -> bool:
        return True

    def feed(self, event: httpx2.ServerSentEvent) -> str:  # pragma: no cover - never called
        raise AssertionError("a whole answer has no events")

    def result(self) -> Completion:  # pragma: no cover - never called
        raise AssertionError("a whole answer has no parser result")

    def __repr__(self) -> str:
        return "<whole answer>"


@attrs.frozen
class StreamStatistics:
    """A snapshot of one streamed completion.

    Args:
        deltas: Text deltas received.
        characters: Characters of text received.
        ttft_s: Seconds from the request's start to the first delta, once it came.
        finished: Whether the final event arrived and the completion is ready.
        attempts: HTTP attempts made before the stream started.
    """

    deltas: int
    characters: int
    ttft_s: float | None
    finished: bool
    attempts: int


class CompletionStream:
    """The text deltas of one streamed completion; an async iterator of strings.

    Returned by :meth:`corral.Client.complete_stream`. When the iteration ends, the final
    :class:`corral.Completion` (with ``ttft_s`` and ``inter_token_gaps_s``) is in
    :attr:`completion`. A failure after the first delta raises the matching
    :class:`corral.RequestFailed` subclass from the iteration; a stream cut before its final
    event raises :class:`corral.InvalidResponseError`, never ends as a truncated success.
    """

    __slots__ = (
        "_attempts",
        "_chars",
        "_completion",
        "_error",
        "_on_end",
        "_reader",
        "_redact",
        "_request_id",
        "_start",
    )

    def __init__(
        self,
        reader: EventReader,
        request_id: str,
        start: float,
        attempts: int,
        on_end: Callable[[Completion | None], Completion | None],
        redact: Callable[[ErrorInfo], ErrorInfo] = lambda info: info,
    ) -> None:
        self._reader = reader
        self._redact = redact
        self._request_id = request_id
        self._start = start
        self._attempts = attempts
        self._on_end = on_end
        self._completion: Completion | None = None
        self._error: RequestFailed | None = None
        self._chars = 0

    def __repr__(self) -> str:
        state = "finished" if self._completion else "failed" if self._error else "open"
        return (
            f"<CompletionStream {self._request_id!r} {state} deltas={self._reader.deltas} "
            f"ttft_s={self._reader.ttft_s}>"
        )

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        if self._error is not None:
            raise self._error
        if self._completion is not None:
            raise StopAsyncIteration
        try:
            delta = await self._reader.next_delta()
            completion = self._reader.completion() if delta is None else None
        except Exception as exc:
            info = stream_failure(exc)
            if info is None:
                raise
            safe = self._redact(info)
            self._error = exception_for(safe, request_id=self._request_id, attempts=self._attempts)
            self._on_end(None)
            if safe.message == info.message:
                raise self._error from exc
        if self._error is not None:
            # The failure quoted a credential: raised here, outside the except block, so that
            # neither its cause nor its context travels with the error (or prints in a
            # traceback).
            raise self._error
        if completion is not None:
            self._completion = attrs.evolve(
                completion,
                latency_s=anyio.current_time() - self._start,
                attempts=self._attempts,
            )
            # The client prices the completion and settles its budget here.
            self._completion = self._on_end(self._completion) or self._completion
            raise StopAsyncIteration
        assert delta is not None
        self._chars += len(delta)
        return delta

    @property
    def completion(self) -> Completion:
        """The final completion; available once the iteration ended without an error."""
        if self._completion is None:
            raise RuntimeError(
                "the stream is not finished: iterate it to the end (or await get_completion())"
            )
        return self._completion

    async def get_completion(self) -> Completion:
        """Read the rest of the stream and return the final completion."""
        async for _ in self:
            pass
        return self.completion

    def statistics(self) -> StreamStatistics:
        """Return a snapshot of the stream so far."""
        return StreamStatistics(
            deltas=self._reader.deltas,
            characters=self._chars,
            ttft_s=self._reader.ttft_s,
            finished=self._completion is not None,
            attempts=self._attempts,
        )
