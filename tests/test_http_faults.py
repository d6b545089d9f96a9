"""One retry policy for every HTTP call: what is transient is retried (and only N + 1 times), a dead
endpoint stops the run with one sentence, and a real socket that cuts a body short is retried."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest

import userlm
from userlm.errors import ConfigurationError
from userlm.models.base import SamplingSettings
from userlm.models.doubles.scripted import ScriptedUser
from userlm.models.http.openai_compat import Endpoint, OpenAIChatModel
from userlm.simulation import RunSettings

SAMPLING = SamplingSettings(temperature=1.0, top_p=0.8, max_new_tokens=12)
OK = {"choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hello"}}],
      "usage": {"prompt_tokens": 3, "completion_tokens": 1}}


def scripted_server(answers, **endpoint):
    """An assistant behind a mock transport answering ``answers`` in turn (the last one repeats)."""
    calls: list[float] = []

    def handler(request):
        calls.append(time.perf_counter())
        answer = answers[min(len(calls) - 1, len(answers) - 1)]
        if isinstance(answer, Exception):
            raise answer
        status, body = answer
        return httpx.Response(status, content=body if isinstance(body, bytes) else json.dumps(body).encode())

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    settings = {"base_url": "http://mock.test/v1", "max_retries": 5} | endpoint
    return OpenAIChatModel("m", endpoint=Endpoint(**settings), sampling=SAMPLING, http_client=http), calls


@pytest.mark.parametrize("fault", [
    (200, b"{not json"),
    (200, b'{"choices": [{"message": {"content": "hel'),  # a body cut off mid-answer
    (200, {"choices": []}),
    (200, {"object": "chat.completion"}),
    (500, {"error": {"message": "boom"}}),
    (502, b"<html>bad gateway</html>"),
    (429, {"error": {"message": "slow down"}}),
    httpx.RemoteProtocolError("peer closed connection without sending complete message body"),
    httpx.ReadTimeout("timed out"),
])
def test_a_transient_fault_is_retried(fault):
    model, calls = scripted_server([fault, (200, OK)])
    reply = asyncio.run(model.reply([{"role": "user", "content": "hi"}]))
    assert reply.text == "hello" and len(calls) == 2


def test_max_retries_n_means_n_plus_one_attempts_with_a_real_backoff():
    model, calls = scripted_server([(500, {"error": "boom"})], max_retries=1)
    with pytest.raises(Exception, match=r"HTTP 500 .*gave up after 2 attempts"):
        asyncio.run(model.reply([{"role": "user", "content": "hi"}]))
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.25  # backoff: at least half of 0.5 s, not a millisecond


def test_a_bad_request_is_not_retried():
    model, calls = scripted_server([(400, {"error": {"message": "max_tokens is too large"}})])
    with pytest.raises(Exception, match=r"HTTP 400 .*max_tokens is too large"):
        asyncio.run(model.reply([{"role": "user", "content": "hi"}]))
    assert len(calls) == 1


@pytest.mark.parametrize("bad", [{"max_retries": -1}, {"concurrency": 0}, {"timeout_s": 0}])
def test_impossible_endpoint_settings_are_refused(bad):
    with pytest.raises(ConfigurationError, match="--max-retries must be 0 or more"):
        Endpoint(base_url="http://x/v1", **bad)


def test_an_endpoint_failing_everything_stops_the_run_and_writes_no_error_records_for_the_rest(tmp_path):
    model, calls = scripted_server([(500, {"error": "down"})], max_retries=0, breaker=3)
    user = userlm.SimulatedUser(ScriptedUser(["got a recipe for me?"]))
    out = tmp_path / "run.jsonl"
    intents = [f"You want recipe number {k}." for k in range(50)]
    with pytest.raises(ConfigurationError, match="failed 3 requests in a row with no success"):
        userlm.simulate(intents, user, model, out=out, settings=RunSettings(concurrency=4), progress=False)
    written = out.read_text().splitlines() if out.exists() else []
    assert len(written) <= 2 and len(calls) < 10  # stopped at once, not 50 error records


def test_a_success_resets_the_breaker():
    answers = [(500, {}), (500, {}), (200, OK), (500, {}), (500, {}), (200, OK)]
    model, calls = scripted_server(answers, max_retries=0, breaker=3)

    async def run():
        out = []
        for _ in range(6):
            try:
                out.append((await model.reply([{"role": "user", "content": "hi"}])).text)
            except ConfigurationError:
                raise
            except Exception:
                out.append(None)
        return out

    assert asyncio.run(run()) == [None, None, "hello", None, None, "hello"]


def test_a_real_socket_that_cuts_the_body_short_is_retried():
    """Over the pooled aiohttp session: the first answer promises 500 bytes and closes after 20."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    served = []

    def serve():
        while len(served) < 2:
            conn, _ = listener.accept()
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, rest = data.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
            while len(rest) < length:
                rest += conn.recv(65536)
            served.append(json.loads(rest))
            if len(served) == 1:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n" + json.dumps(OK).encode()[:20])
            else:
                body = json.dumps(OK).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    model = OpenAIChatModel("m", endpoint=Endpoint(base_url=f"http://127.0.0.1:{port}/v1", max_retries=2, timeout_s=10), sampling=SAMPLING)

    async def once():
        try:
            return await model.reply([{"role": "user", "content": "hi"}])
        finally:
            await model.aclose()

    reply = asyncio.run(once())
    listener.close()
    assert reply.text == "hello" and len(served) == 2


def json_service(respond):
    """A detector-style HTTP service on 127.0.0.1: ``respond(texts)`` gives (status, body bytes).
    Returns the server (shut it down) and its URL."""
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Service(BaseHTTPRequestHandler):
        def do_POST(self):
            status, body = respond(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["texts"])
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Service)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}/score"


def test_the_detector_service_follows_the_same_policy():
    """A naturalness detector behind HTTP: a 503 and a cut answer are retried; a service that always
    fails ends in one sentence after N + 1 attempts."""
    from userlm.evaluation.simulators.detectors import HTTPDetector

    answers = []
    server, url = json_service(lambda texts: answers.pop(0) if answers else (200, json.dumps({"scores": [0.5] * len(texts)}).encode()))
    detector = HTTPDetector(url)
    try:
        answers.extend([(503, b"{}"), (200, b'{"scores": [0.')])
        assert asyncio.run(detector.human_likelihood(["a text", "another"])) == [0.5, 0.5]
        answers.extend([(500, b"{}")] * 4)
        with pytest.raises(ConfigurationError, match=r"did not answer .*ServerError: HTTP 500 \(gave up after 4 attempts\)"):
            asyncio.run(detector.human_likelihood(["a text"]))
    finally:
        server.shutdown()
