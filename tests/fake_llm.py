"""A scripted OpenAI-compatible chat server on 127.0.0.1, for driving LiteLLM's real HTTP path.

Each POST to /v1/chat/completions (or /chat/completions) takes the next step of the script and
records the request (headers and JSON body). A step is one of:

    tool_calls([("list_tensors", {"layer_min": 1}), ...])   assistant message calling tools
    answer("text")                                           final assistant message
    http_error(429, "slow down")                             an error status with an OpenAI error body
    delay(seconds, step)                                     wait, then answer with `step`
    a callable(request_body) -> step                         decided from what the agent sent

When the script runs out, the server answers 500 (a test that asks more than it scripted fails
loudly, not by hanging).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_ids = itertools.count(1)


def tool_calls(calls, content: str | None = None) -> dict:
    """`calls`: (name, arguments) pairs; arguments a dict (sent as JSON) or a raw string (sent as is)."""
    out = []
    for name, args in calls:
        out.append({"id": f"call_{next(_ids)}", "type": "function",
                    "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)}})
    return {"kind": "message", "message": {"role": "assistant", "content": content, "tool_calls": out},
            "finish_reason": "tool_calls"}


def answer(text: str) -> dict:
    return {"kind": "message", "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}


def http_error(status: int, message: str = "scripted error", headers: dict | None = None) -> dict:
    return {"kind": "error", "status": status, "message": message, "headers": headers or {}}


def delay(seconds: float, step: dict) -> dict:
    return {"kind": "delay", "seconds": seconds, "step": step}


@dataclass
class ScriptedLLM:
    script: list = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)  # request bodies, in order
    headers: list[dict] = field(default_factory=list)  # names lower-cased: HTTP header names are case-insensitive
    paths: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        llm = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet test output
                pass

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with llm._lock:
                    llm.requests.append(body)
                    llm.headers.append({k.lower(): v for k, v in self.headers.items()})  # names are case-insensitive
                    llm.paths.append(self.path)
                    step = llm.script.pop(0) if llm.script else http_error(500, "the test script ran out of steps")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    step = http_error(404, f"unknown path {self.path}")
                if callable(step):
                    step = step(body)
                if step["kind"] == "delay":
                    time.sleep(step["seconds"])
                    step = step["step"]
                if step["kind"] == "error":
                    payload = {"error": {"message": step["message"], "type": "scripted", "code": str(step["status"])}}
                    self._send(step["status"], payload, step["headers"])
                    return
                self._send(200, {
                    "id": f"chatcmpl-{next(_ids)}", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model", "scripted"),
                    "choices": [{"index": 0, "message": step["message"], "finish_reason": step["finish_reason"]}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                })

            def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def add(self, *steps) -> "ScriptedLLM":
        with self._lock:
            self.script.extend(steps)
        return self

    def tool_messages(self, request_index: int) -> list[dict]:
        """The tool results the agent sent in one request."""
        return [m for m in self.requests[request_index]["messages"] if m["role"] == "tool"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
