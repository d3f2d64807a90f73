"""A local OpenAI-compatible chat completions server for tests and benchmarks: real HTTP, JSON and server-sent
events, on 127.0.0.1 (port 0), in a thread.

It answers `POST /v1/chat/completions` (and `GET /v1/models`) deterministically from the last user message,
counts calls per model, and misbehaves on request, per model: latency (fixed and per token), a finish reason,
429s before succeeding, hard failures, and a gate that holds answers until the test opens it.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class ModelBehaviour:
    """How the stub answers one model.

    Attributes:
        latency_seconds: Before the first byte.
        per_token_seconds: Per completion token (a stream spreads it over its chunks).
        finish_reason: The answer's finish reason.
        rate_limited: Answer this many calls with 429 (Retry-After 10 ms) before answering normally.
        fail: Answer every call with 500.
        answer_words: Words of filler appended to the answer.
        tool_call: When the request offers tools, answer with a call of the first one (finish "tool_calls").
    """

    latency_seconds: float = 0.0
    per_token_seconds: float = 0.0
    finish_reason: str = "stop"
    rate_limited: int = 0
    fail: bool = False
    answer_words: int = 0
    tool_call: bool = False


@dataclass
class StubLLM:
    """Start with `start()`, stop with `stop()`; `base_url` is what `OpenAI(base_url=...)` takes."""

    behaviours: dict[str, ModelBehaviour] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)  # answered or failed calls, per model
    gate: threading.Event = field(default_factory=threading.Event)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.gate.set()  # open unless a test closes it

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def behaviour(self, model: str) -> ModelBehaviour:
        return self.behaviours.setdefault(model, ModelBehaviour())

    def start(self) -> StubLLM:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    self._json(200, {"object": "list", "data": [
                        {"id": m, "object": "model", "created": 0, "owned_by": "stub"} for m in stub.behaviours]})
                else:
                    self._json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))) or b"{}")
                model = str(body.get("model", ""))
                behaviour = stub.behaviour(model)
                with stub._lock:
                    stub.calls[model] += 1
                    limited = behaviour.rate_limited > 0
                    if limited:
                        behaviour.rate_limited -= 1
                if limited:
                    self._json(429, {"error": {"message": "slow down", "type": "rate_limit_exceeded"}},
                               headers={"retry-after-ms": "10", "retry-after": "0.01"})
                    return
                if behaviour.fail:
                    self._json(500, {"error": {"message": "the model is down", "type": "server_error"}})
                    return
                stub.gate.wait()
                time.sleep(behaviour.latency_seconds)
                messages = body.get("messages") or [{}]
                prompt = messages[-1].get("content")
                prompt_text = prompt if isinstance(prompt, str) else json.dumps(prompt)
                # The question's first words make answers tell apart; the filler gives them a length.
                answer = f"Answer ({model}) to: {' '.join(prompt_text.split()[:12])}" + "".join(
                    f" word{i}" for i in range(behaviour.answer_words))
                prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
                completion_tokens = len(answer.split())
                usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                         "total_tokens": prompt_tokens + completion_tokens}
                created = int(time.time())
                response_id = f"chatcmpl-stub-{stub.calls[model]}"
                tools = body.get("tools") or []
                if behaviour.tool_call and tools:
                    self._tool_call(body, response_id, created, model, tools[0]["function"]["name"], usage)
                    return
                if not body.get("stream"):
                    time.sleep(behaviour.per_token_seconds * completion_tokens)
                    self._json(200, {
                        "id": response_id, "object": "chat.completion", "created": created, "model": model,
                        "choices": [{"index": 0, "finish_reason": behaviour.finish_reason, "logprobs": None,
                                     "message": {"role": "assistant", "content": answer}}],
                        "usage": usage})
                    return
                self._stream(body, response_id, created, model, answer, usage, behaviour)

            def _tool_call(self, body: dict[str, Any], response_id: str, created: int, model: str, name: str,
                           usage: dict[str, int]) -> None:
                call = {"id": f"call_{response_id}", "type": "function",
                        "function": {"name": name, "arguments": json.dumps({"question": "stub"})}}
                if not body.get("stream"):
                    self._json(200, {
                        "id": response_id, "object": "chat.completion", "created": created, "model": model,
                        "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None,
                                     "message": {"role": "assistant", "content": None, "tool_calls": [call]}}],
                        "usage": usage})
                    return
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("connection", "close")
                self.end_headers()
                deltas = [({"role": "assistant", "content": None,
                            "tool_calls": [{"index": 0, **call}]}, None), ({}, "tool_calls")]
                for delta, finish in deltas:
                    data = {"id": response_id, "object": "chat.completion.chunk", "created": created, "model": model,
                            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                    self.wfile.write(f"data: {json.dumps(data)}\n\n".encode())
                if (body.get("stream_options") or {}).get("include_usage"):
                    data = {"id": response_id, "object": "chat.completion.chunk", "created": created, "model": model,
                            "choices": [], "usage": usage}
                    self.wfile.write(f"data: {json.dumps(data)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

            def _stream(self, body: dict[str, Any], response_id: str, created: int, model: str, answer: str,
                        usage: dict[str, int], behaviour: ModelBehaviour) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("cache-control", "no-cache")
                self.send_header("connection", "close")
                self.end_headers()

                def chunk(delta: dict[str, Any] | None, finish: str | None = None,
                          chunk_usage: dict[str, int] | None = None) -> bool:
                    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish,
                                                         "logprobs": None}]
                    data = {"id": response_id, "object": "chat.completion.chunk", "created": created,
                            "model": model, "choices": choices, "usage": chunk_usage}
                    try:
                        self.wfile.write(f"data: {json.dumps(data)}\n\n".encode())
                        self.wfile.flush()
                    except (BrokenPipeError, ConnectionResetError):
                        return False  # the client went away (an abandoned stream)
                    return True

                if not chunk({"role": "assistant", "content": ""}):
                    return
                words = answer.split(" ")
                for i, word in enumerate(words):
                    time.sleep(behaviour.per_token_seconds)
                    if not chunk({"content": word + (" " if i + 1 < len(words) else "")}):
                        return
                chunk({}, finish=behaviour.finish_reason)
                if (body.get("stream_options") or {}).get("include_usage"):
                    chunk(None, chunk_usage=usage)
                try:
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return
                self.close_connection = True

            def _json(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="openai-stub", daemon=True).start()
        return self

    def stop(self) -> None:
        self.gate.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
