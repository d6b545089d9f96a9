"""Eager start of chosen coroutines on Python 3.11 (aiohttp's request writes)."""

from __future__ import annotations

import asyncio
import sys

import pytest

from userlm.models.eager import start_eagerly

pytestmark = pytest.mark.skipif(sys.version_info >= (3, 12), reason="Python 3.12 and later start tasks eagerly themselves")


def test_chosen_coroutines_run_to_their_first_wait_when_their_task_is_made():
    events = []

    async def write(tag: str) -> str:
        events.append(f"{tag} starts")
        await asyncio.sleep(0)
        events.append(f"{tag} goes on")
        return f"{tag} written"

    async def other() -> None:
        events.append("other starts")

    async def main() -> list[str]:
        assert start_eagerly(asyncio.get_running_loop(), [write])
        task = asyncio.create_task(write("a"))
        plain = asyncio.create_task(other())
        events.append("made")
        results = await asyncio.gather(task, plain)
        return results

    results = asyncio.run(main())
    assert results == ["a written", None]
    assert events == ["a starts", "made", "other starts", "a goes on"]


def test_a_coroutine_done_in_its_first_step_gives_a_finished_future_with_its_result_or_error():
    async def quick(fail: bool) -> int:
        if fail:
            raise ValueError("no body")
        return 7

    async def main():
        start_eagerly(asyncio.get_running_loop(), [quick])
        done = asyncio.get_running_loop().create_task(quick(False))
        failed = asyncio.get_running_loop().create_task(quick(True))
        assert done.done() and failed.done()
        with pytest.raises(ValueError, match="no body"):
            await failed
        return await done

    assert asyncio.run(main()) == 7


def test_cancelling_and_failing_after_the_first_step_reach_the_coroutine_and_its_awaiter():
    seen = []

    async def slow(fail: bool) -> None:
        try:
            await asyncio.sleep(0 if fail else 10)
            if fail:
                raise RuntimeError("connection lost")
        except asyncio.CancelledError:
            seen.append("cancelled inside")
            raise

    async def main():
        start_eagerly(asyncio.get_running_loop(), [slow])
        waiting = asyncio.create_task(slow(False))
        failing = asyncio.create_task(slow(True))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        with pytest.raises(RuntimeError, match="connection lost"):
            await failing

    asyncio.run(main())
    assert seen == ["cancelled inside"]


def test_a_loop_with_its_own_task_factory_keeps_it():
    async def write() -> None:
        pass

    async def main() -> bool:
        loop = asyncio.get_running_loop()

        def mine(loop, coro, context=None):
            return asyncio.Task(coro, loop=loop, context=context)

        loop.set_task_factory(mine)
        installed = start_eagerly(loop, [write])
        assert loop.get_task_factory() is mine
        return installed

    assert asyncio.run(main()) is False


def test_the_pooled_http_session_installs_it_and_other_tasks_are_made_as_before():
    from userlm.models.http.openai_compat import Endpoint, _aiohttp_session

    async def main():
        loop = asyncio.get_running_loop()
        session = _aiohttp_session(Endpoint(base_url="http://127.0.0.1:9/v1"))
        try:
            factory = loop.get_task_factory()
            assert factory is not None

            async def unrelated() -> None:
                pass

            coro = unrelated()
            task = factory(loop, coro)
            assert isinstance(task, asyncio.Task) and task.get_coro() is coro  # other tasks are made as before
            await task
        finally:
            await session.close()

    asyncio.run(main())
