"""Tests for Client: results, retries, limits, deadlines and cancellation, on both backends."""

from __future__ import annotations

import gc
import random
from collections.abc import AsyncIterator, Iterator

import anyio
import anyio.lowlevel
import pytest
import stamina

import corral
from corral.providers import OpenAI

from .scripted import ScriptedServer

pytestmark = pytest.mark.anyio

BASE = "http://127.0.0.1:9/v1"


@pytest.fixture(autouse=True)
def _no_backoff_sleeps() -> Iterator[None]:
    """Remove stamina's backoff sleeps but keep each policy's attempt count."""
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


def req(i: int | str, text: str = "hi") -> corral.ChatRequest:
    return corral.ChatRequest("gpt-4o-mini", [{"role": "user", "content": text}], id=f"q{i}")


def client_for(server: ScriptedServer, **kwargs: object) -> corral.Client:
    return corral.Client(OpenAI(BASE, api_key="sk-test"), http_client=server.client(), **kwargs)  # type: ignore[arg-type]


async def test_complete_returns_a_normalised_completion() -> None:
    """complete() returns the parsed completion with usage, latency and one attempt."""
    server = ScriptedServer()
    async with client_for(server) as client:
        result = await client.complete(req(1, "hello"))
    assert result.ok
    assert result.id == "q1"
    assert result.content == "echo hello"
    assert result.usage == corral.Usage(5, 2)
    assert result.attempts == 1
    assert server.hits["q1"] == 1


@pytest.mark.parametrize(
    ("status", "exc"),
    [
        (401, corral.AuthenticationError),
        (403, corral.PermissionDeniedError),
        (404, corral.NotFoundError),
        (400, corral.BadRequestError),
        (500, corral.ServerError),
        (503, corral.OverloadedError),
        (429, corral.RateLimitedError),
    ],
)
async def test_complete_raises_the_matching_error(
    status: int, exc: type[corral.RequestFailed]
) -> None:
    """complete() raises the RequestFailed subclass matching the failure's kind."""
    server = ScriptedServer(default=lambda rid, n: status)
    async with client_for(server, retry=corral.RetryPolicy(attempts=2)) as client:
        with pytest.raises(exc) as info:
            await client.complete(req(1))
    assert info.value.request_id == "q1"
    assert info.value.info.status_code == status
    assert info.value.attempts == (2 if info.value.info.retryable else 1)


async def test_server_hits_equal_one_plus_retries() -> None:
    """Each retryable failure costs exactly one more hit, and attempts counts them all."""
    server = ScriptedServer(
        {"q1": [500, 503, 429, 200], "q2": [200], "q3": ["reset", 200], "q4": [400, 200]}
    )
    async with client_for(server, retry=corral.RetryPolicy(attempts=6)) as client:
        batch = await client.run([req(1), req(2), req(3), req(4)])
    by_id = {r.id: r for r in batch}
    assert {k: by_id[k].attempts for k in by_id} == {"q1": 4, "q2": 1, "q3": 2, "q4": 1}
    assert dict(server.hits) == {"q1": 4, "q2": 1, "q3": 2, "q4": 1}
    assert by_id["q4"].ok is False
    assert batch.statistics.retries == 3 + 1
    assert batch.statistics.attempts == server.total_hits


async def test_attempts_are_capped_by_the_policy() -> None:
    """A request that keeps failing stops after the policy's attempts, as a Failure."""
    server = ScriptedServer(default=lambda rid, n: 500)
    async with client_for(server, retry=corral.RetryPolicy(attempts=3)) as client:
        batch = await client.run([req(1)])
    (result,) = batch.results
    assert isinstance(result, corral.Failure)
    assert result.error.kind is corral.ErrorKind.SERVER_ERROR
    assert result.attempts == 3 == server.hits["q1"]


async def test_run_returns_results_in_input_order() -> None:
    """run() returns one result per input in input order, even when they finish out of order."""
    rng = random.Random(1)
    server = ScriptedServer(latency=lambda: rng.random() / 100)
    async with client_for(server, max_concurrency=16) as client:
        batch = await client.run(req(i) for i in range(100))
    assert [r.id for r in batch] == [f"q{i}" for i in range(100)]
    assert batch.statistics.succeeded == 100


async def test_run_reads_async_iterables_lazily() -> None:
    """An async iterable input is pulled only as fast as concurrency tokens free up."""
    pulled = 0
    gate = anyio.Event()

    def slow(request: object) -> object:
        raise AssertionError("unused")

    server = ScriptedServer()

    async def held(request: object) -> object:
        await gate.wait()
        return None

    async def source() -> AsyncIterator[corral.ChatRequest]:
        nonlocal pulled
        for i in range(50):
            pulled += 1
            yield req(i)

    original = server.handle

    async def gated(request):  # type: ignore[no-untyped-def]
        await gate.wait()
        return await original(request)

    server.handle = gated  # type: ignore[method-assign]
    async with client_for(server, max_concurrency=4) as client, anyio.create_task_group() as tg:
        results: list[corral.BatchResult] = []

        async def go() -> None:
            results.append(await client.run(source()))

        tg.start_soon(go)
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        # Four admitted, one more pulled and waiting for a token; nothing else read.
        assert pulled <= 5
        gate.set()
    assert len(results[0]) == 50


async def test_peak_in_flight_never_exceeds_max_concurrency() -> None:
    """The server never sees more than max_concurrency requests at once, and does see that many."""
    rng = random.Random(2)
    server = ScriptedServer(latency=lambda: rng.random() / 200)
    async with client_for(server, max_concurrency=7) as client:
        await client.run(req(i) for i in range(300))
        async with client.stream(req(i) for i in range(300, 600)) as results:
            async for _ in results:
                pass
        assert client.statistics().in_flight == 0
    assert server.peak_in_flight == 7


async def test_one_result_per_input_under_random_faults() -> None:
    """Under random faults every input yields exactly one result with its id; nothing is lost."""
    rng = random.Random(3)
    faults: list[int | str] = [429, 500, 503, "reset", 400, 200, 200, 200, 200, 200, 200]
    # Retry-After: 0 keeps the shared 429 cooldown from adding wall-clock seconds to the test.
    server = ScriptedServer(
        default=lambda rid, n: rng.choice(faults),
        latency=lambda: rng.random() / 500,
        retry_after="0",
    )
    async with client_for(server, max_concurrency=20, retry=corral.RetryPolicy(attempts=4)) as c:
        async with c.stream(req(i) for i in range(500)) as results:
            ids = [r.id async for r in results]
        stats = results.statistics()
    assert sorted(ids) == sorted(f"q{i}" for i in range(500))
    assert stats.total == 500
    assert stats.attempts == server.total_hits
    assert stats.failures_by_kind.get("bad_request", 0) > 0


async def test_stream_yields_as_completed() -> None:
    """stream() delivers fast results before slow ones."""
    server = ScriptedServer(latency=lambda: 0.0)

    async def slow_first(request):  # type: ignore[no-untyped-def]
        if request.headers["x-client-request-id"] == "q0":
            await anyio.sleep(0.05)
        return await ScriptedServer.handle(server, request)

    server.handle = slow_first  # type: ignore[method-assign]
    async with (
        client_for(server, max_concurrency=4) as client,
        client.stream([req(0), req(1), req(2)]) as results,
    ):
        ids = [r.id async for r in results]
    assert ids[-1] == "q0"


async def test_leaving_a_stream_early_cancels_in_flight_work() -> None:
    """Breaking out of a stream cancels requests in flight and releases every token."""
    server = ScriptedServer({"q0": [200]}, default=lambda rid, n: "stall")
    async with client_for(server, max_concurrency=5) as client:
        async with client.stream(req(i) for i in range(100)) as results:
            async for result in results:
                assert result.id == "q0"
                break
        assert client.statistics().in_flight == 0
        assert client._limiter is not None
        assert client._limiter.borrowed_tokens == 0
    assert server.in_flight == 0


@pytest.mark.parametrize("seed", range(6))
async def test_cancellation_at_random_points_leaves_nothing_behind(seed: int) -> None:
    """Cancelling run() at a random moment leaves no task, limiter token or in-flight request."""
    rng = random.Random(seed)
    server = ScriptedServer(latency=lambda: rng.random() / 100)
    baseline = len(anyio.get_running_tasks())
    async with client_for(server, max_concurrency=8) as client:
        with anyio.move_on_after(rng.random() / 20) as scope:
            await client.run(req(i) for i in range(10_000))
        assert scope.cancelled_caught
        assert client.statistics().in_flight == 0
        assert client._limiter is not None
        assert client._limiter.borrowed_tokens == 0
        assert len(anyio.get_running_tasks()) == baseline
        # The client is still usable afterwards.
        assert (await client.complete(req("after"))).ok
    assert server.in_flight == 0


async def test_client_must_be_opened() -> None:
    """Calling a client outside its async with is a clear error."""
    client = corral.Client(OpenAI(BASE, api_key="k"))
    with pytest.raises(RuntimeError, match="async with"):
        await client.complete(req(1))


async def test_inputs_must_be_requests() -> None:
    """A non-request input is a bug and raises TypeError naming the fix."""
    server = ScriptedServer()
    async with client_for(server) as client:
        with pytest.raises(TypeError, match="ChatRequest"):
            await client.run([{"model": "m"}])  # type: ignore[list-item]


@pytest.mark.parametrize(
    "kwargs", [{"max_concurrency": 0}, {"max_concurrency": 2.5}, {"request_timeout": 0}]
)
def test_bad_client_arguments(kwargs: dict[str, object]) -> None:
    """Bad Client arguments raise ConfigurationError naming the argument."""
    with pytest.raises(corral.ConfigurationError, match=next(iter(kwargs))):
        corral.Client(OpenAI(BASE, api_key="k"), **kwargs)  # type: ignore[arg-type]


def test_provider_must_be_an_adapter() -> None:
    """Passing something that is not a provider adapter is refused."""
    with pytest.raises(corral.ConfigurationError, match="provider"):
        corral.Client("openai")  # type: ignore[arg-type]


def test_missing_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A remote provider without a key fails at construction, naming the variable to set."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(corral.ConfigurationError, match="OPENAI_API_KEY"):
        OpenAI("https://api.openai.com/v1")
    OpenAI("http://localhost:8000/v1")  # loopback servers need none


def test_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key is read from OPENAI_API_KEY when none is passed."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    request = OpenAI().build_request(req(1))
    assert request.headers["authorization"] == "Bearer sk-from-env"
    del request
    gc.collect()


async def test_stream_raises_input_errors_after_earlier_results() -> None:
    """A bad item in a stream's input is raised by the iteration, not swallowed as an end."""
    server = ScriptedServer()

    def source():  # type: ignore[no-untyped-def]
        yield req(1)
        yield "not a request"

    async with client_for(server, max_concurrency=1) as client:
        seen = []
        with pytest.raises(TypeError, match="ChatRequest"):
            async with client.stream(source()) as results:
                async for result in results:
                    seen.append(result.id)
    assert seen in ([], ["q1"])


async def test_input_iterator_errors_propagate_unwrapped() -> None:
    """An exception from the caller's own iterator reaches run()'s caller as itself."""
    server = ScriptedServer()

    async def source():  # type: ignore[no-untyped-def]
        yield req(1)
        raise LookupError("my input broke")

    async with client_for(server) as client:
        with pytest.raises(LookupError, match="my input broke"):
            await client.run(source())
        assert client.statistics().in_flight == 0


async def test_errors_raised_inside_a_stream_block_stay_unwrapped() -> None:
    """An exception the caller raises inside the stream block reaches it as itself."""
    server = ScriptedServer(default=lambda rid, n: "stall")
    async with client_for(server, max_concurrency=3) as client:
        with pytest.raises(KeyError, match="mine"):
            async with client.stream(req(i) for i in range(10)) as results:
                await anyio.sleep(0.01)
                raise KeyError("mine")
        assert client.statistics().in_flight == 0
        del results
