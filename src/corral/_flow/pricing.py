"""Token prices and the true cost of a request.

Prices are USD per million tokens. A request's cost is computed from normalised usage
(`corral.Usage`), where ``input_tokens`` includes cached input and cache writes:

- uncached input = ``input_tokens - cached_input_tokens - cache_write_tokens``, at ``input``;
- cached input (cache reads) at ``cached_input``;
- cache writes at ``cache_write``;
- output, reasoning included, at ``output``.

A model whose prompt is longer than its ``long_context.threshold`` is priced entirely at the
long-context rates, as Gemini, Anthropic and OpenAI bill it.

A model with no known price costs None (never a silent zero), with one warning per model on
the ``corral`` logger.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import re
import tomllib
from collections.abc import Iterator, Mapping
from os import PathLike
from pathlib import Path
from typing import Any, Final

import attrs

from .._errors import ConfigurationError, ConfigurationTypeError, check_number, check_type
from .._models import Usage

__all__ = ["CostBreakdown", "LongContextPrice", "ModelPrice", "Pricing"]

_log = logging.getLogger("corral")

_PER: Final = 1_000_000.0
# Distinct model names whose resolved price is remembered (the rest are looked up each time).
_RESOLVED_CACHE_SIZE: Final = 1024


def _price(inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_number(value, f"price {attribute.name}", minimum=0, optional=True)


def _threshold(inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    check_number(value, "long_context.threshold", minimum=1, integer=True)


def _float(value: int | float, name: str) -> float:
    # Strict on purpose: a price of "2" in a file is a mistake to report, not to coerce.
    check_number(value, f"price {name}", minimum=0)
    return float(value)


# One converter per field, so that an error names the field (mypy's attrs plugin takes only
# named functions as converters).
def _input(value: int | float) -> float:
    return _float(value, "input")


def _output(value: int | float) -> float:
    return _float(value, "output")


def _cached_input(value: int | float | None) -> float | None:
    return None if value is None else _float(value, "cached_input")


def _cache_write(value: int | float | None) -> float | None:
    return None if value is None else _float(value, "cache_write")


@attrs.frozen
class LongContextPrice:
    """The rates that apply, to the whole request, once a prompt exceeds `threshold` tokens.

    Args:
        threshold: Prompt tokens (``input_tokens``) above which these rates apply.
        input: USD per million uncached input tokens.
        output: USD per million output tokens.
        cached_input: USD per million cached input tokens; defaults to `input`.
        cache_write: USD per million cache-write tokens; defaults to `input`.
    """

    threshold: int = attrs.field(validator=_threshold)
    input: float = attrs.field(converter=_input, validator=_price)
    output: float = attrs.field(converter=_output, validator=_price)
    cached_input: float | None = attrs.field(
        default=None, converter=_cached_input, validator=_price
    )
    cache_write: float | None = attrs.field(default=None, converter=_cache_write, validator=_price)


def _to_long_context(value: LongContextPrice | Mapping[str, Any] | None) -> LongContextPrice | None:
    if value is None or isinstance(value, LongContextPrice):
        return value
    if isinstance(value, Mapping):
        try:
            return LongContextPrice(**value)
        except TypeError as exc:
            raise ConfigurationError(f"bad long_context price {dict(value)!r}: {exc}") from exc
    raise ConfigurationTypeError(
        f"long_context must be a LongContextPrice, a mapping or None, got {type(value).__name__}"
    )


@attrs.frozen
class ModelPrice:
    """The price of one model, in USD per million tokens.

    Args:
        input: Uncached input tokens.
        output: Output tokens, reasoning included.
        cached_input: Input tokens read from the provider's cache; defaults to `input`
            (no cache discount).
        cache_write: Input tokens written to the provider's cache (Anthropic charges extra);
            defaults to `input`.
        long_context: Higher rates for prompts over a threshold, if the model has them.
    """

    input: float = attrs.field(converter=_input, validator=_price)
    output: float = attrs.field(converter=_output, validator=_price)
    cached_input: float | None = attrs.field(
        default=None, converter=_cached_input, validator=_price
    )
    cache_write: float | None = attrs.field(default=None, converter=_cache_write, validator=_price)
    long_context: LongContextPrice | None = attrs.field(default=None, converter=_to_long_context)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ModelPrice:
        """Build a price from a mapping of its fields, as found in a JSON or TOML table.

        Args:
            data: ``input``, ``output`` and optionally ``cached_input``, ``cache_write`` and
                ``long_context`` (a mapping with ``threshold`` and the same rates).

        Raises:
            ConfigurationError: If a field is missing, unknown or not a valid price.
        """
        if not isinstance(data, Mapping):
            raise ConfigurationTypeError(
                f"a model price must be a mapping, got {type(data).__name__}"
            )
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigurationError(f"bad model price {dict(data)!r}: {exc}") from exc

    def rates(self, prompt_tokens: int) -> tuple[float, float, float, float]:
        """Return (input, cached_input, cache_write, output) rates for a prompt of that size.

        Args:
            prompt_tokens: The request's ``input_tokens``.
        """
        tier: ModelPrice | LongContextPrice = self
        if self.long_context is not None and prompt_tokens > self.long_context.threshold:
            tier = self.long_context
        cached = tier.cached_input if tier.cached_input is not None else tier.input
        write = tier.cache_write if tier.cache_write is not None else tier.input
        return tier.input, cached, write, tier.output


@attrs.frozen
class CostBreakdown:
    """A request's cost split by kind of token, in USD.

    Args:
        input_usd: Uncached input.
        cached_input_usd: Input read from the cache.
        cache_write_usd: Input written to the cache.
        output_usd: Output, reasoning included.
    """

    input_usd: float
    cached_input_usd: float
    cache_write_usd: float
    output_usd: float

    @property
    def total_usd(self) -> float:
        """The whole cost."""
        return self.input_usd + self.cached_input_usd + self.cache_write_usd + self.output_usd


def _parts(price: ModelPrice, usage: Usage) -> tuple[float, float, float, float]:
    """Return the USD cost of uncached input, cached input, cache writes and output."""
    prompt = max(usage.input_tokens, 0)
    cached = max(usage.cached_input_tokens, 0)
    written = max(usage.cache_write_tokens, 0)
    uncached = max(prompt - cached - written, 0)
    rate_in, rate_cached, rate_write, rate_out = price.rates(prompt)
    return (
        uncached * rate_in / _PER,
        cached * rate_cached / _PER,
        written * rate_write / _PER,
        max(usage.output_tokens, 0) * rate_out / _PER,
    )


# Model-name variants that price like their base model: provider prefixes ("openai/gpt-4o",
# "models/gemini-2.5-pro") and dated or aliased suffixes ("gpt-4o-2024-08-06",
# "claude-3-5-haiku-20241022", "claude-sonnet-4@20250514", "claude-3-5-sonnet-latest").
_PREFIX: Final = re.compile(r"^(?:[\w.-]+/)+")
_SUFFIXES: Final = (
    re.compile(r"[-@]\d{4}-\d{2}-\d{2}$"),
    re.compile(r"[-@]\d{8}$"),
    re.compile(r"-latest$"),
    re.compile(r"-\d{3}$"),
    re.compile(r"-\d{2}-\d{2}$"),
    re.compile(r"-\d{4}$"),
)


def _candidates(model: str) -> Iterator[str]:
    """Yield the names to look a model up under, most specific first."""
    name = model.strip()
    yield name
    name = name.lower()
    yield name
    name = _PREFIX.sub("", name)
    yield name
    for _ in range(3):  # bounded: suffixes rarely stack more than twice
        stripped = name
        for suffix in _SUFFIXES:
            stripped = suffix.sub("", stripped)
            if stripped != name:
                break
        if stripped == name:
            return
        name = stripped
        yield name


def _coerce_models(models: Mapping[str, ModelPrice | Mapping[str, Any]]) -> dict[str, ModelPrice]:
    if not isinstance(models, Mapping):
        raise ConfigurationTypeError(
            f"Pricing.models must be a mapping of model names to prices, got "
            f"{type(models).__name__}"
        )
    coerced: dict[str, ModelPrice] = {}
    for name, price in models.items():
        if not isinstance(name, str):
            raise ConfigurationTypeError(
                f"Pricing.models: model names must be non-empty strings, got {type(name).__name__}"
            )
        if not name:
            raise ConfigurationError(
                "Pricing.models: model names must be non-empty strings, got ''"
            )
        try:
            coerced[name] = (
                price if isinstance(price, ModelPrice) else ModelPrice.from_mapping(price)
            )
        except ConfigurationError as exc:
            raise type(exc)(f"Pricing.models[{name!r}]: {exc}") from exc
    return coerced


def _coerce_fallback(value: ModelPrice | Mapping[str, Any] | None) -> ModelPrice | None:
    if value is None or isinstance(value, ModelPrice):
        return value
    if not isinstance(value, Mapping):
        raise ConfigurationTypeError(
            f"Pricing.fallback must be a ModelPrice, a mapping or None, got {type(value).__name__}"
        )
    try:
        return ModelPrice.from_mapping(value)
    except ConfigurationError as exc:
        raise type(exc)(f"Pricing.fallback: {exc}") from exc


def _compiled(inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        check_type(value, "Pricing.compiled", str, "a date string (YYYY-MM-DD) or None")


@attrs.frozen
class Pricing:
    """Prices by model, used to compute ``cost_usd`` and to reserve budget.

    Build it with `Pricing.default` (the bundled table), `Pricing.from_file`, or directly;
    `with_overrides` returns a copy with models added or replaced.

    A model name is looked up as given, then lowercased, then without a provider prefix
    (``"openai/gpt-4o"``), then without dated suffixes (``"gpt-4o-2024-08-06"`` prices as
    ``"gpt-4o"``). There is no guessing beyond that: an unknown model uses `fallback`, or costs
    None (with one logged warning per model).

    Args:
        models: `ModelPrice` (or a mapping of its fields) by model name.
        fallback: The price of any model not in `models`; None to report unknown models as
            having no price.
        compiled: The date (``YYYY-MM-DD``) the prices were compiled, if known.
    """

    models: Mapping[str, ModelPrice] = attrs.field(
        factory=dict, converter=_coerce_models, hash=False
    )
    fallback: ModelPrice | None = attrs.field(default=None, converter=_coerce_fallback)
    compiled: str | None = attrs.field(default=None, validator=_compiled)
    _warned: set[str] = attrs.field(factory=set, init=False, eq=False, repr=False, hash=False)
    # Model name -> its resolved price: every answer is priced, and a batch uses few models.
    _resolved: dict[str, ModelPrice | None] = attrs.field(
        factory=dict, init=False, eq=False, repr=False, hash=False
    )

    @classmethod
    def default(cls) -> Pricing:
        """Return the bundled price table (OpenAI, Anthropic, Gemini and DeepSeek models).

        Its ``compiled`` date says when the prices were read; check your provider's page for
        anything newer and override what differs.
        """
        text = importlib.resources.files("corral").joinpath("prices.json").read_text("utf-8")
        return cls._from_data(json.loads(text), "the bundled price table")

    @classmethod
    def from_file(cls, path: str | PathLike[str]) -> Pricing:
        """Load prices from a TOML (``.toml``) or JSON file.

        The file has a ``models`` table of model name to ``{input, output, cached_input,
        cache_write, long_context}`` and optionally ``compiled`` and ``fallback``::

            compiled = "2026-11-27"
            [models."my-model"]
            input = 0.50
            output = 1.50
            cached_input = 0.05

        Combine it with the bundled table as
        ``Pricing.default().with_overrides(Pricing.from_file(path))``.

        Args:
            path: The file to read.

        Raises:
            ConfigurationError: If the file cannot be read or parsed, or a price is invalid.
        """
        file = Path(path)
        try:
            raw = file.read_bytes()
        except OSError as exc:
            raise ConfigurationError(f"cannot read prices from {file}: {exc}") from exc
        try:
            if file.suffix.lower() == ".toml":
                data = tomllib.loads(raw.decode("utf-8"))
            else:
                data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"cannot parse prices in {file}: {exc}") from exc
        return cls._from_data(data, str(file))

    @classmethod
    def _from_data(cls, data: object, source: str) -> Pricing:
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"{source}: expected a table with 'models'")
        models = data.get("models", {})
        if not isinstance(models, Mapping):
            raise ConfigurationError(f"{source}: 'models' must be a table")
        compiled = data.get("compiled")
        if compiled is not None and not isinstance(compiled, str):
            compiled = str(compiled)  # TOML parses a bare date as datetime.date
        try:
            return cls(models=models, fallback=data.get("fallback"), compiled=compiled)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{source}: {exc}") from exc

    def with_overrides(
        self, overrides: Pricing | Mapping[str, ModelPrice | Mapping[str, Any]]
    ) -> Pricing:
        """Return a copy with `overrides` added, replacing any model of the same name.

        Args:
            overrides: Prices by model name, or another `Pricing` (whose fallback, if set,
                also replaces this one's).
        """
        if isinstance(overrides, Pricing):
            fallback = overrides.fallback or self.fallback
            added: Mapping[str, ModelPrice | Mapping[str, Any]] = overrides.models
        else:
            fallback = self.fallback
            added = overrides
        merged = dict(self.models)
        merged.update(_coerce_models(added))
        return Pricing(models=merged, fallback=fallback, compiled=self.compiled)

    def price_for(self, model: str) -> ModelPrice | None:
        """Return the price of `model`, or the fallback, or None if neither exists.

        Args:
            model: The model name as sent to the provider.
        """
        for name in _candidates(model):
            price = self.models.get(name)
            if price is not None:
                return price
        return self.fallback

    def _lookup(self, model: str) -> ModelPrice | None:
        resolved = self._resolved
        if model in resolved:
            return resolved[model]
        price = self.price_for(model)
        if len(resolved) < _RESOLVED_CACHE_SIZE:
            resolved[model] = price
        if price is None and model not in self._warned:
            self._warned.add(model)
            _log.warning(
                "no price known for model %r: its cost_usd is None; add it with "
                "Pricing.with_overrides() or a prices file",
                model,
            )
        return price

    def breakdown(self, model: str, usage: Usage) -> CostBreakdown | None:
        """Return the cost of one request split by kind of token, or None if unpriced.

        Args:
            model: The model that served the request.
            usage: Its normalised usage (`corral.Usage`).
        """
        price = self._lookup(model)
        if price is None:
            return None
        return CostBreakdown(*_parts(price, usage))

    def cost(self, model: str, usage: Usage) -> float | None:
        """Return the cost of one request in USD, or None if the model has no known price.

        Args:
            model: The model that served the request.
            usage: Its normalised usage (`corral.Usage`).
        """
        price = self._lookup(model)
        if price is None:
            return None
        # breakdown()'s sum without its value object: this runs for every answer.
        fresh, cached, written, output = _parts(price, usage)
        return fresh + cached + written + output

    def worst_case_cost(
        self, model: str, input_tokens: int, max_tokens: int | None
    ) -> float | None:
        """Return the most one attempt of a request can cost, for budgets; None if unbounded.

        Every input token is charged at the dearest input rate (cache writes cost more than
        plain input on Anthropic), every allowed output token at the output rate, at the
        long-context rates too when the prompt may pass their threshold.

        Args:
            model: The model the request is for.
            input_tokens: The most prompt tokens the provider can bill (a bound, not an
                estimate: see `corral.providers`).
            max_tokens: The most output tokens it can bill (0 for embeddings); None means no
                bound, so no worst case.
        """
        price = self._lookup(model)
        if price is None or max_tokens is None:
            return None
        prompt = max(int(input_tokens), 0)
        tiers: list[ModelPrice | LongContextPrice] = [price]
        if price.long_context is not None and prompt > price.long_context.threshold:
            tiers.append(price.long_context)
        worst = 0.0
        for tier in tiers:
            dearest_input = max(tier.input, tier.cached_input or 0.0, tier.cache_write or 0.0)
            worst = max(worst, (prompt * dearest_input + max(max_tokens, 0) * tier.output) / _PER)
        return worst

    def __repr__(self) -> str:
        return (
            f"Pricing(models=<{len(self.models)} models>, fallback={self.fallback!r},"
            f" compiled={self.compiled!r})"
        )
