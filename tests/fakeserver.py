"""A local OpenAI-compatible test server that misbehaves on purpose, in a background thread.

The number of words in a request's prompt chooses what it does (`MODES`); otherwise it streams
`max_tokens` tokens `TOKEN_GAP_S` apart and reports usage, counting one BOS token in the prompt
as a Llama tokenizer does. It counts requests in flight so a test
can check the client's concurrency bound.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field

from aiohttp import web

BOS = 1  # tokens the server adds to every prompt
TOKEN_GAP_S = 0.004
SLOW_FIRST_S = 0.3
MODES = {
    11: "slow_first",  # first token after SLOW_FIRST_S
    12: "drop",  # connection closed after 3 tokens
    13: "http500",
    14: "truncate",  # finishes normally after half the tokens, usage says so
    15: "hang",  # sends 2 tokens, then nothing
    16: "bad_json",  # a malformed event after 2 tokens
    17: "no_usage",  # streams every token but never reports usage (tokens are counted)
}


@dataclass
class FakeServer:
    """Start with `start()`; `url` is then http://127.0.0.1:PORT."""

    url: str = ""
    in_flight: int = 0
    max_in_flight: int = 0
    requests: int = 0
    bodies: list[dict] = field(default_factory=list)

    def start(self) -> FakeServer:
        ready = threading.Event()

        def serve() -> None:
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            app = web.Application()
            app.router.add_post("/v1/completions", self._completions)
            app.router.add_post("/v1/chat/completions", self._completions)
            app.router.add_get("/health", self._health)
            # Cancel a handler when its client goes away (a hung stream must not outlive it).
            self.runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            port = site._server.sockets[0].getsockname()[1]
            self.url = f"http://127.0.0.1:{port}"
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        async def down() -> None:
            await self.runner.cleanup()

        asyncio.run_coroutine_threadsafe(down(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _health(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(request, body)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request, body: dict) -> web.StreamResponse:
        chat = "messages" in body
        text = body["messages"][-1]["content"] if chat else body["prompt"]
        words = len(str(text).split())
        n = int(body["max_tokens"])
        mode = MODES.get(words, "ok")
        if mode == "http500":
            return web.Response(status=500, text="internal error (on purpose)")
        if not body.get("stream"):
            usage = {"prompt_tokens": words + BOS, "completion_tokens": n}
            doc = {"choices": [{"index": 0, "text": " aa" * n}], "usage": usage}
            return web.json_response(doc)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if mode == "slow_first":
            await asyncio.sleep(SLOW_FIRST_S)
        produce = n // 2 if mode == "truncate" else n
        sent = 0
        for i in range(produce):
            if mode == "drop" and i == 3:
                request.transport.close()  # an abrupt end mid-stream
                return resp
            if mode == "hang" and i == 2:
                await asyncio.sleep(3600)
            if mode == "bad_json" and i == 2:
                await resp.write(b"data: {not json\n\n")
            piece = {"delta": {"content": " aa"}} if chat else {"text": " aa"}
            chunk = {"choices": [{"index": 0, **piece, "finish_reason": None}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
            sent += 1
            await asyncio.sleep(TOKEN_GAP_S)
        final: dict = {"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}
        if mode != "no_usage":
            final["usage"] = {
                "prompt_tokens": words + BOS,
                "completion_tokens": sent,
                "total_tokens": words + BOS + sent,
            }
        await resp.write(f"data: {json.dumps(final)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
