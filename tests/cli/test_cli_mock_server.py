"""``corral mock-server``: serves the mock APIs on a port until interrupted."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx2
import pytest

from .clikit import child_env, corral_command

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def test_mock_server_command_serves_until_interrupted() -> None:
    """``corral mock-server --port 0`` prints its URL, answers, and exits 0 on Ctrl-C."""
    process = subprocess.Popen(
        corral_command("mock-server", "--port", "0", "--latency", "0.001"),
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert "listening on " in first, process.stderr.read() if process.stderr else ""
        url = first.split("listening on ", 1)[1].split()[0]
        question = {"role": "user", "content": "What is 2 + 3?"}
        response = httpx2.post(
            url + "/v1/chat/completions",
            headers={"authorization": "Bearer sk-test"},
            json={"model": "gpt-4o-mini", "messages": [question]},
        )
        assert response.status_code == 200
        assert response.json()["choices"][0]["message"]["content"] == "5"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
