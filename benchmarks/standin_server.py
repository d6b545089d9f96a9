"""An OpenAI-compatible stand-in server for B3: answers every completions and chat completions
request after a fixed delay, with a short distinct user-like text. It runs in its own process
and is kept minimal (a bare asyncio protocol speaking HTTP/1.1 keep-alive), so that on a small
machine it takes as little as possible of the CPU it shares with the runner being measured.

    python benchmarks/standin_server.py --port 8123 --delay 0.1
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json

counter = itertools.count()
USAGE = {"prompt_tokens": 10, "completion_tokens": 9, "total_tokens": 19}


def answer(path: str, body: bytes) -> bytes:
    n = next(counter)
    model = json.loads(body or b"{}").get("model", "m")
    if path.endswith("/chat/completions"):
        choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": f"Sure, here is answer {n}."}}
        payload = {"id": str(n), "object": "chat.completion", "created": 0, "model": model, "choices": [choice], "usage": USAGE}
    else:
        text = f"could you tell me more about option number {n} please"
        choice = {"index": 0, "finish_reason": "stop", "text": "\n" + text, "logprobs": None}
        payload = {"id": str(n), "object": "text_completion", "created": 0, "model": model, "choices": [choice], "usage": USAGE}
    data = json.dumps(payload).encode()
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(data), data)


class StandIn(asyncio.Protocol):
    def __init__(self, delay: float):
        self.delay = delay
        self.buffer = b""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body, self.buffer = self.buffer[end + 4 : end + 4 + length], self.buffer[end + 4 + length :]
            path = head.split(" ", 2)[1]
            asyncio.get_running_loop().call_later(self.delay, self._respond, path, body)

    def _respond(self, path: str, body: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(answer(path, body))


async def serve(port: int, delay: float) -> None:
    server = await asyncio.get_running_loop().create_server(lambda: StandIn(delay), "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.1)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.delay))


if __name__ == "__main__":
    main()
