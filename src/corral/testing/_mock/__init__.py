"""The mock LLM server behind :class:`corral.testing.MockServer`.

- ``server``: the ASGI app, routing, fault injection and hit counting.
- ``config``: :class:`corral.testing.MockConfig` and the statistics values.
- ``wire``: the ASGI plumbing shared by the API modules.
- ``openai_api`` / ``anthropic_api`` / ``gemini_api``: one module per API's shapes.
- ``limits``: the rate-limit emulation and its headers.
- ``text``: deterministic answers and token counts.
"""
