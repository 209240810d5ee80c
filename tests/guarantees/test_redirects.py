"""Redirects are never followed for API calls, so a key never travels to another origin.

Origin A is a real loopback server that answers every API call with a redirect to origin B, a
second real listener on another port that records every connection it accepts. Whatever the
redirect status, the provider, the transport, or the user's own ``httpx2.AsyncClient`` (even one
made with ``follow_redirects=True``), the call fails with a typed error that names the redirect
and its target, and B sees nothing: no connection, so no ``Authorization``, ``x-api-key``,
``x-goog-api-key`` or ``api-key`` header either. An https origin that redirects to plain http
(a downgrade) gets the same treatment.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final, Literal

import anyio
import anyio.abc
import attrs
import h11
import httpx2
import pytest
import trustme
from anyio.streams.tls import TLSStream

import corral
from corral.providers import Anthropic, Gemini, OpenAI

pytestmark = pytest.mark.anyio

KEY: Final = "sk-redirect-canary-5e0d1c2b3a49"
CREDENTIAL_HEADERS: Final = ("authorization", "x-api-key", "x-goog-api-key", "api-key")
REDIRECTS: Final = (301, 302, 303, 307, 308)
DOWNGRADES: Final = (302, 307, 308)
PROVIDERS: Final[dict[str, Callable[[str], Any]]] = {
    "openai": lambda url: OpenAI(url + "/v1", api_key=KEY),
    "anthropic": lambda url: Anthropic(url, api_key=KEY),
    "gemini": lambda url: Gemini(url, api_key=KEY),
}
How = Literal["fast", "httpx", "own-client"]
HOWS: Final[tuple[How, ...]] = ("fast", "httpx", "own-client")
DEADLINE: Final = 10.0


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the machine's proxy settings away from loopback requests."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


# -- loopback origins ---------------------------------------------------------------------------


@attrs.define
class Origin:
    """A loopback listener and everything it received."""

    scheme: str
    port: int = 0
    accepted: int = 0
    requests: list[dict[str, str]] = attrs.field(factory=list)

    @property
    def url(self) -> str:
        """The origin's root URL."""
        return f"{self.scheme}://127.0.0.1:{self.port}"


async def read_request(stream: anyio.abc.ByteStream, conn: h11.Connection) -> dict[str, str] | None:
    """Read one request with h11 in the server role; return its headers and target, or None."""
    found: dict[str, str] = {}
    for _ in range(10_000):
        event = conn.next_event()
        if event is h11.NEED_DATA:
            try:
                conn.receive_data(await stream.receive())
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                conn.receive_data(b"")
        elif isinstance(event, h11.Request):
            found = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
            found[":target"] = event.target.decode()
        elif isinstance(event, h11.EndOfMessage):
            return found
        elif not isinstance(event, h11.Data):
            return None
    raise AssertionError("the request never ended")


@asynccontextmanager
async def origin(
    answer: Callable[[dict[str, str]], bytes], *, tls: ssl.SSLContext | None = None
) -> AsyncIterator[Origin]:
    """Serve *answer* (request headers -> raw response) on a fresh 127.0.0.1 port."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    state = Origin("https" if tls is not None else "http")
    state.port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def serve(sock: anyio.abc.SocketStream) -> None:
        state.accepted += 1
        stream: anyio.abc.ByteStream = sock
        try:
            if tls is not None:
                stream = await TLSStream.wrap(
                    sock, server_side=True, ssl_context=tls, standard_compatible=False
                )
            for _ in range(100):
                conn = h11.Connection(h11.SERVER)
                request = await read_request(stream, conn)
                if request is None:
                    return
                state.requests.append(request)
                await stream.send(answer(request))
        except (anyio.BrokenResourceError, anyio.EndOfStream, ssl.SSLError, OSError):
            pass
        finally:
            await anyio.aclose_forcefully(stream)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        try:
            yield state
        finally:
            tg.cancel_scope.cancel()


def redirect_to(status: int, target: Origin) -> Callable[[dict[str, str]], bytes]:
    """Return an answer that redirects every request to the same path on *target*."""

    def answer(request: dict[str, str]) -> bytes:
        location = target.url + request[":target"]
        return (
            f"HTTP/1.1 {status} Redirect\r\nlocation: {location}\r\n"
            f"content-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}"
        ).encode()

    return answer


def recorded_ok(request: dict[str, str]) -> bytes:
    """Answer like a server that took the request (origin B should never get to)."""
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


# -- TLS ----------------------------------------------------------------------------------------


@pytest.fixture
def trust_ca(ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """Trust the throwaway CA: through SSL_CERT_FILE for corral's own clients, and as a context
    for the user's own client."""
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    monkeypatch.setenv("SSL_CERT_FILE", str(path))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


# -- the client under test ----------------------------------------------------------------------


@asynccontextmanager
async def client_for(
    provider: Any, how: How, verify: ssl.SSLContext | None = None
) -> AsyncIterator[corral.Client]:
    """Open a Client that sends through *how*: corral's fast transport, httpx2's stock client,
    or the user's own ``httpx2.AsyncClient(follow_redirects=True)``."""
    retry = corral.RetryPolicy(attempts=3, timeout=DEADLINE)
    if how == "own-client":
        own = httpx2.AsyncClient(follow_redirects=True, verify=verify or True, timeout=DEADLINE)
        async with own, corral.Client(provider, http_client=own, retry=retry) as client:
            yield client
    else:
        async with corral.Client(
            provider, transport=how, retry=retry, request_timeout=DEADLINE
        ) as client:
            yield client


def requests() -> Iterator[corral.ChatRequest]:
    """Yield one chat request per mode: whole and streamed are told apart by their id."""
    for mode in ("chat", "stream"):
        yield corral.ChatRequest(
            "model-x", [corral.Message("user", "hello")], max_tokens=8, id=f"{mode}-1"
        )


def check_failure(failure: corral.Result, status: int, location: str) -> None:
    """Assert that *failure* is the typed redirect error, naming the status and the target."""
    assert isinstance(failure, corral.Failure), failure
    assert failure.error.kind is corral.ErrorKind.INVALID_RESPONSE, failure
    assert failure.error.status_code == status, failure
    assert failure.error.retryable is False
    assert "redirect" in failure.error.message, failure
    assert location in failure.error.message, failure
    assert failure.attempts == 1, failure


async def exercise(
    a: Origin, b: Origin, status: int, how: How, verify: ssl.SSLContext | None = None
) -> None:
    """Send whole and streamed chat calls, through run() and complete(), for every provider."""
    for name, make in PROVIDERS.items():
        before = len(a.requests)
        async with client_for(make(a.url), how, verify) as client:
            for request in requests():
                stream = request.id.startswith("stream")
                (failure,) = (await client.run([request], stream=stream)).results
                location = f"{b.url}{a.requests[-1][':target']}"
                check_failure(failure, status, location)
                with pytest.raises(corral.InvalidResponseError, match="redirect") as raised:
                    if stream:
                        async with client.complete_stream(request):
                            pass
                    else:
                        await client.complete(request)
                assert isinstance(failure, corral.Failure)
                assert raised.value.info == failure.error
        # Each call reached A exactly once, carrying its key there and nowhere else.
        sent = a.requests[before:]
        assert len(sent) == 4, (name, sent)
        assert all(KEY in " ".join(r.get(h, "") for h in CREDENTIAL_HEADERS) for r in sent)


def assert_nothing_reached(b: Origin) -> None:
    """Assert that origin B accepted no connection, so no header of any kind reached it."""
    leaked = [{h: r[h] for h in CREDENTIAL_HEADERS if h in r} for r in b.requests]
    assert leaked == [], f"credentials reached the redirect target: {leaked}"
    assert b.requests == []
    assert b.accepted == 0


# -- the tests ----------------------------------------------------------------------------------


def hows() -> list[Any]:
    """Return the ways of sending: corral's two stacks and the user's own following client."""
    return list(HOWS)


@pytest.mark.parametrize("how", hows())
@pytest.mark.parametrize("status", REDIRECTS)
async def test_a_redirect_to_another_origin_is_not_followed(status: int, how: How) -> None:
    """A 3xx to another loopback origin is a typed failure naming it; that origin sees nothing."""
    with anyio.fail_after(DEADLINE):
        async with origin(recorded_ok) as b, origin(redirect_to(status, b)) as a:
            await exercise(a, b, status, how)
    assert_nothing_reached(b)


@pytest.mark.parametrize("how", hows())
@pytest.mark.parametrize("status", DOWNGRADES)
async def test_an_https_to_http_downgrade_is_refused(
    status: int, how: How, server_context: ssl.SSLContext, trust_ca: ssl.SSLContext
) -> None:
    """An https origin redirecting to plain http: typed failure, the http listener sees nothing."""
    with anyio.fail_after(DEADLINE):
        async with (
            origin(recorded_ok) as b,
            origin(redirect_to(status, b), tls=server_context) as a,
        ):
            assert a.url.startswith("https://")
            assert b.url.startswith("http://")
            await exercise(a, b, status, how, verify=trust_ca)
    assert a.accepted >= 1
    assert_nothing_reached(b)


async def test_the_recording_origin_does_record() -> None:
    """Origin B does record what reaches it: a request sent there on purpose shows its headers."""
    with anyio.fail_after(DEADLINE):
        async with origin(recorded_ok) as b, httpx2.AsyncClient() as http:
            await http.get(b.url + "/v1/x", headers={"x-api-key": KEY})
    assert b.accepted == 1
    assert b.requests[0]["x-api-key"] == KEY
    with pytest.raises(AssertionError, match="credentials reached"):
        assert_nothing_reached(b)


async def test_a_followed_redirect_is_what_the_test_catches(server_context: ssl.SSLContext) -> None:
    """A plain httpx2 client that follows redirects does carry x-api-key to origin B: the leak
    these tests guard against is real, and they see it."""
    with anyio.fail_after(DEADLINE):
        async with (
            origin(recorded_ok) as b,
            origin(redirect_to(307, b)) as a,
            httpx2.AsyncClient(follow_redirects=True) as http,
        ):
            response = await http.post(a.url + "/v1/messages", headers={"x-api-key": KEY})
    assert response.status_code == 200
    assert b.requests[0]["x-api-key"] == KEY
