"""The OpenAI-compatible moderation judge against a real HTTP server on loopback."""
from __future__ import annotations

import json
import math
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import numpy as np
import pytest

from runtime.errors import UserError
from runtime.judges.chat_api import MODERATION_PROMPT, ChatAPIJudge, endpoint, parse_verdict


class _Server:
    """A tiny /v1/chat/completions: 'unsafe' when the user turn contains "stupid", else 'safe'."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.logprobs = False
        self.reject_logprobs = False
        self.answer: str | None = None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": "no such route"})
                if body.get("model") != "llama-guard":
                    return self._send(404, {"error": f"model {body.get('model')} not found"})
                if outer.reject_logprobs and body.get("logprobs"):
                    return self._send(400, {"error": "logprobs not supported"})
                unsafe = "stupid" in body["messages"][-1]["content"]
                choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "message": {
                    "role": "assistant", "content": outer.answer or ("unsafe\nS10" if unsafe else "safe")}}
                if outer.logprobs and body.get("logprobs"):
                    p = 0.8 if unsafe else 0.1
                    top = [{"token": "unsafe", "logprob": math.log(p)}, {"token": "safe", "logprob": math.log(0.95 - p)}]
                    choice["logprobs"] = {"content": [{"token": "\n\n", "logprob": 0.0, "top_logprobs": []},
                                                      {"token": top[0 if unsafe else 1]["token"],
                                                       "logprob": top[0 if unsafe else 1]["logprob"],
                                                       "top_logprobs": top}]}
                self._send(200, {"object": "chat.completion", "choices": [choice]})

            def _send(self, code: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    thread = threading.Thread(target=s.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


TEXTS = ["you are so stupid", "have a nice day", "what a stupid idea"]


def test_verdicts_without_logprobs(server: _Server) -> None:
    judge = ChatAPIJudge(server.url + "/v1", "llama-guard", workers=2)
    np.testing.assert_array_equal(judge.score(TEXTS), [1.0, 0.0, 1.0])
    assert len(server.requests) == 3
    assert {r["messages"][0]["content"] for r in server.requests} == set(TEXTS)  # a guard model gets the bare text
    assert all(r["temperature"] == 0.0 and r["logprobs"] for r in server.requests)
    assert judge.score([]).shape == (0,)


def test_logprobs_give_probabilities(server: _Server) -> None:
    server.logprobs = True
    scores = ChatAPIJudge(server.url, "llama-guard").score(TEXTS)
    np.testing.assert_allclose(scores, [0.8 / 0.95, 0.1 / 0.95, 0.8 / 0.95], rtol=1e-6)


def test_server_rejecting_logprobs_falls_back_to_verdicts(server: _Server) -> None:
    server.reject_logprobs = True
    judge = ChatAPIJudge(server.url, "llama-guard", workers=1)
    np.testing.assert_array_equal(judge.score(TEXTS), [1.0, 0.0, 1.0])
    assert not judge.logprobs


def test_other_models_get_the_moderation_prompt(server: _Server) -> None:
    judge = ChatAPIJudge(server.url, "llama-guard", wrap=True)
    assert judge.score(["a {brace} and stupid"]).tolist() == [1.0]
    assert server.requests[0]["messages"][0]["content"] == MODERATION_PROMPT.replace("{text}", "a {brace} and stupid")
    assert ChatAPIJudge(server.url, "qwen2.5-7b-instruct").wrap and not ChatAPIJudge(server.url, "Llama-Guard-3").wrap


def test_errors_name_the_problem(server: _Server) -> None:
    with pytest.raises(UserError, match="HTTP 404.*not found.*'other'"):
        ChatAPIJudge(server.url, "other", workers=1).score(["hi"] * 20)
    assert len(server.requests) <= 3  # the first failure stops the remaining requests
    server.answer = "I cannot help with that."
    with pytest.raises(UserError, match="neither 'safe' nor 'unsafe'"):
        ChatAPIJudge(server.url, "llama-guard").score(["hi"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with pytest.raises(UserError, match="cannot reach the judge server"):
        ChatAPIJudge(f"http://127.0.0.1:{closed_port}", "llama-guard", timeout=5).score(["hi"])
    with pytest.raises(UserError, match="must start with http"):
        ChatAPIJudge("localhost:8000", "llama-guard")


def test_endpoint_and_parsing() -> None:
    assert endpoint("http://h:1") == "http://h:1/v1/chat/completions"
    assert endpoint("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert endpoint("https://h/api/v1/chat/completions") == "https://h/api/v1/chat/completions"
    reply = {"choices": [{"message": {"content": "\n\nunsafe\nS1"}, "logprobs": {"content": [
        {"token": "uns", "logprob": math.log(0.6), "top_logprobs": [
            {"token": "uns", "logprob": math.log(0.6)}, {"token": "safe", "logprob": math.log(0.3)},
            {"token": "I", "logprob": math.log(0.1)}]}]}}]}
    assert parse_verdict(reply) == pytest.approx(0.6 / 0.9)
    with pytest.raises(UserError, match="not a chat completion"):
        parse_verdict({"error": "overloaded"})
