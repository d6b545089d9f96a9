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


def answer(path: bytes) -> bytes:
    n = next(counter)
    if path.endswith(b"/chat/completions"):
        choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": f"Sure, here is answer {n}."}}
        payload = {"id": str(n), "object": "chat.completion", "created": 0, "model": "standin", "choices": [choice], "usage": USAGE}
    else:
        text = f"could you tell me more about option number {n} please"
        choice = {"index": 0, "finish_reason": "stop", "text": "\n" + text, "logprobs": None}
        payload = {"id": str(n), "object": "text_completion", "created": 0, "model": "standin", "choices": [choice], "usage": USAGE}
    data = json.dumps(payload).encode()
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(data), data)


class StandIn(asyncio.Protocol):
    """Reads requests with byte searches only (the body is never parsed): the less CPU each
    request takes here, the less a burst of requests queues before its delay starts."""

    def __init__(self, delay: float):
        self.delay = delay
        self.buffer = b""

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            at = head.lower().find(b"\r\ncontent-length:")
            length = int(head[at + 17 : head.find(b"\r\n", at + 2) if head.find(b"\r\n", at + 2) > 0 else end]) if at >= 0 else 0
            if len(self.buffer) < end + 4 + length:
                return
            path = head.split(b" ", 2)[1]
            self.buffer = self.buffer[end + 4 + length :]
            self.loop.call_later(self.delay, self._respond, path)

    def _respond(self, path: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(answer(path))


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
