"""Prices and costs: hand-computed cases, name matching, unknown models, files, worst cases."""

from __future__ import annotations

import datetime
import json
import logging
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral._errors import ConfigurationError
from corral._flow.pricing import LongContextPrice, ModelPrice, Pricing
from corral._models import Usage

# USD per million tokens, chosen so that hand computation is easy.
PRICES = Pricing(
    models={
        "plain": ModelPrice(input=2.0, output=8.0),
        "cached": ModelPrice(input=2.0, output=8.0, cached_input=0.5),
        "anthropic-like": ModelPrice(input=3.0, output=15.0, cached_input=0.3, cache_write=3.75),
        "tiered": ModelPrice(
            input=1.0,
            output=10.0,
            cached_input=0.1,
            long_context=LongContextPrice(
                threshold=200_000, input=2.0, output=15.0, cached_input=0.2
            ),
        ),
    }
)


@pytest.mark.parametrize(
    ("model", "usage", "expected"),
    [
        # 1,000 uncached input at $2 + 500 output at $8.
        ("plain", Usage(input_tokens=1_000, output_tokens=500), 0.002 + 0.004),
        # Without a cached price, cached input costs the full input price.
        ("plain", Usage(1_000, 500, cached_input_tokens=400), 0.002 + 0.004),
        # 600 uncached at $2, 400 cached at $0.50, 500 output at $8.
        ("cached", Usage(1_000, 500, cached_input_tokens=400), 0.0012 + 0.0002 + 0.004),
        # Reasoning tokens are part of the output: 300 output (200 of them reasoning) at $8.
        ("cached", Usage(100, 300, reasoning_tokens=200), 0.0002 + 0.0024),
        # 1,000 uncached at $3, 3,000 cache reads at $0.30, 2,000 cache writes at $3.75,
        # 100 output at $15.
        (
            "anthropic-like",
            Usage(6_000, 100, cached_input_tokens=3_000, cache_write_tokens=2_000),
            0.003 + 0.0009 + 0.0075 + 0.0015,
        ),
        # Under the threshold: base rates.
        ("tiered", Usage(200_000, 1_000, cached_input_tokens=100_000), 0.1 + 0.01 + 0.01),
        # Over it: every token at the long-context rates.
        ("tiered", Usage(300_000, 1_000, cached_input_tokens=100_000), 0.4 + 0.02 + 0.015),
        ("plain", Usage(), 0.0),
    ],
)
def test_costs_match_hand_computation(model: str, usage: Usage, expected: float) -> None:
    """Uncached, cached, cache-write and output tokens are each charged at their own price."""
    assert PRICES.cost(model, usage) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_breakdown_splits_the_cost_by_kind_of_token() -> None:
    """The breakdown's parts are the per-kind costs and add up to the total."""
    usage = Usage(6_000, 100, cached_input_tokens=3_000, cache_write_tokens=2_000)
    parts = PRICES.breakdown("anthropic-like", usage)
    assert parts is not None
    assert parts.input_usd == pytest.approx(0.003)
    assert parts.cached_input_usd == pytest.approx(0.0009)
    assert parts.cache_write_usd == pytest.approx(0.0075)
    assert parts.output_usd == pytest.approx(0.0015)
    assert parts.total_usd == PRICES.cost("anthropic-like", usage)


def test_bundled_table_prices_well_known_models() -> None:
    """The default table knows the usual models, with cached and cache-write prices."""
    pricing = Pricing.default()
    mini = pricing.cost("gpt-4o-mini", Usage(1_000, 500, cached_input_tokens=200))
    assert mini == pytest.approx((800 * 0.15 + 200 * 0.075 + 500 * 0.60) / 1e6)
    haiku = pricing.cost(
        "claude-haiku-4-5", Usage(3_000, 100, cached_input_tokens=1_000, cache_write_tokens=1_000)
    )
    assert haiku == pytest.approx((1_000 * 1.0 + 1_000 * 0.10 + 1_000 * 1.25 + 100 * 5.0) / 1e6)
    for model in ("gpt-4o", "claude-sonnet-4-5", "gemini-2.5-flash", "deepseek-v3.2"):
        assert pricing.price_for(model) is not None, model


def test_bundled_table_has_a_compiled_date_and_valid_entries() -> None:
    """The bundled file carries the date it was compiled and every price in it is valid."""
    pricing = Pricing.default()
    assert pricing.compiled is not None
    compiled = datetime.date.fromisoformat(pricing.compiled)
    assert compiled.year >= 2026
    assert len(pricing.models) >= 30
    for name, price in pricing.models.items():
        assert price.output >= 0, name
        assert price.input > 0, name
        if price.cached_input is not None:
            assert price.cached_input <= price.input, name


@pytest.mark.parametrize(
    ("name", "base"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("openai/gpt-4o-mini", "gpt-4o-mini"),
        ("GPT-4o", "gpt-4o"),
        ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("anthropic/claude-haiku-4-5@20251001", "claude-haiku-4-5"),
        ("models/gemini-2.5-flash", "gemini-2.5-flash"),
        ("deepseek/deepseek-chat", "deepseek-chat"),
    ],
)
def test_model_names_match_through_prefixes_and_dated_suffixes(name: str, base: str) -> None:
    """Provider prefixes, case and dated or -latest suffixes price as the base model."""
    pricing = Pricing.default()
    assert pricing.price_for(name) == pricing.price_for(base)
    assert pricing.price_for(name) is not None


def test_matching_does_not_guess_from_a_prefix() -> None:
    """A different model that merely starts with a known name is not priced as it."""
    pricing = Pricing(models={"gpt-4o": ModelPrice(1, 1)})
    assert pricing.price_for("gpt-4o-mini") is None
    assert pricing.price_for("gpt-4o-audio-preview") is None


def test_unknown_model_costs_none_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    """An unpriced model gives None, never zero, and warns once per model."""
    pricing = Pricing.default()
    with caplog.at_level(logging.WARNING, logger="corral"):
        assert pricing.cost("mystery-model", Usage(10, 10)) is None
        assert pricing.cost("mystery-model", Usage(10, 10)) is None
        assert pricing.worst_case_cost("mystery-model", 10, 10) is None
        assert pricing.cost("other-mystery", Usage(1, 1)) is None
    warnings = [r for r in caplog.records if r.name == "corral"]
    assert len(warnings) == 2
    assert "mystery-model" in warnings[0].getMessage()


def test_fallback_prices_unknown_models() -> None:
    """A fallback price applies to any model not in the table."""
    pricing = Pricing(fallback={"input": 1.0, "output": 2.0})
    assert pricing.cost("anything", Usage(1_000_000, 1_000_000)) == pytest.approx(3.0)


def test_overrides_add_and_replace_models() -> None:
    """with_overrides returns a copy with new or replaced prices; the original is unchanged."""
    base = Pricing.default()
    custom = base.with_overrides(
        {"gpt-4o-mini": {"input": 1.0, "output": 1.0}, "my-model": ModelPrice(0.5, 1.5)}
    )
    assert custom.cost("gpt-4o-mini", Usage(1_000_000, 0)) == pytest.approx(1.0)
    assert custom.cost("my-model", Usage(0, 1_000_000)) == pytest.approx(1.5)
    assert base.price_for("my-model") is None
    assert custom.compiled == base.compiled
    merged = base.with_overrides(Pricing(models={"x": ModelPrice(1, 1)}, fallback=ModelPrice(9, 9)))
    assert merged.price_for("unknown") == ModelPrice(9, 9)


def test_prices_load_from_toml_and_json(tmp_path: Path) -> None:
    """A TOML or JSON file of prices loads into the same Pricing."""
    toml = tmp_path / "prices.toml"
    toml.write_text(
        'compiled = 2026-01-02\n[models."my-model"]\ninput = 0.5\noutput = 1.5\n'
        'cached_input = 0.05\n[models."my-model".long_context]\nthreshold = 1000\n'
        "input = 1\noutput = 3\n",
        encoding="utf-8",
    )
    from_toml = Pricing.from_file(toml)
    as_json = {
        "compiled": "2026-01-02",
        "models": {
            "my-model": {
                "input": 0.5,
                "output": 1.5,
                "cached_input": 0.05,
                "long_context": {"threshold": 1000, "input": 1, "output": 3},
            }
        },
    }
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(as_json), encoding="utf-8")
    from_json = Pricing.from_file(path)
    assert from_toml == from_json
    assert from_toml.compiled == "2026-01-02"
    assert from_toml.cost("my-model", Usage(2_000, 0)) == pytest.approx(0.002)


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        '{"models": []}',
        '{"models": {"m": {"input": -1, "output": 1}}}',
        '{"models": {"m": {"input": 1}}}',
        '{"models": {"m": {"input": 1, "output": 1, "surprise": 2}}}',
        '{"models": {"m": {"input": "cheap", "output": 1}}}',
        '{"models": {"m": {"input": 1, "output": 1, "long_context": {"input": 1}}}}',
        "[1, 2]",
    ],
)
def test_bad_price_files_raise_configuration_errors(tmp_path: Path, content: str) -> None:
    """Malformed files and invalid prices are reported as ConfigurationError."""
    path = tmp_path / "prices.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigurationError):
        Pricing.from_file(path)


def test_a_missing_price_file_raises_configuration_error(tmp_path: Path) -> None:
    """A file that cannot be read is a configuration error, chained to the OS error."""
    with pytest.raises(ConfigurationError) as info:
        Pricing.from_file(tmp_path / "absent.toml")
    assert isinstance(info.value.__cause__, OSError)


def test_worst_case_needs_a_bound_on_output() -> None:
    """Without max_tokens a request has no worst case, so none is claimed."""
    assert PRICES.worst_case_cost("plain", 100, None) is None
    assert PRICES.worst_case_cost("plain", 1_000, 500) == pytest.approx(0.006)
    # Cache writes cost more than input on Anthropic, so input is reserved at that rate.
    assert PRICES.worst_case_cost("anthropic-like", 1_000_000, 0) == pytest.approx(3.75)


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(sorted(Pricing.default().models)),
    st.integers(min_value=0, max_value=400_000),
    st.integers(min_value=0, max_value=100_000),
    st.data(),
)
def test_worst_case_bounds_every_real_cost(
    model: str, estimate: int, max_tokens: int, data: st.DataObject
) -> None:
    """No usage within the estimate and max_tokens costs more than the worst case."""
    pricing = Pricing.default()
    worst = pricing.worst_case_cost(model, estimate, max_tokens)
    assert worst is not None
    input_tokens = data.draw(st.integers(min_value=0, max_value=estimate))
    cached = data.draw(st.integers(min_value=0, max_value=input_tokens))
    written = data.draw(st.integers(min_value=0, max_value=input_tokens - cached))
    output = data.draw(st.integers(min_value=0, max_value=max_tokens))
    usage = Usage(input_tokens, output, cached, written, reasoning_tokens=output // 2)
    cost = pricing.cost(model, usage)
    assert cost is not None
    assert cost <= worst * (1 + 1e-12) + 1e-15


@pytest.mark.parametrize(
    "kwargs",
    [
        {"input": -1.0, "output": 1.0},
        {"input": float("inf"), "output": 1.0},
        {"input": 1.0, "output": "2"},
        {"input": 1.0, "output": 1.0, "cached_input": -0.1},
        {"input": 1.0, "output": 1.0, "long_context": {"threshold": 0, "input": 1, "output": 1}},
    ],
)
def test_invalid_prices_are_refused(kwargs: dict[str, object]) -> None:
    """Negative, infinite and non-numeric prices raise ConfigurationError."""
    with pytest.raises(ConfigurationError):
        ModelPrice(**kwargs)  # type: ignore[arg-type]


def test_repr_is_short_and_informative() -> None:
    """The repr names the number of models and the compiled date, not the whole table."""
    text = repr(Pricing.default())
    assert "models" in text
    assert "compiled=" in text
    assert len(text) < 200
