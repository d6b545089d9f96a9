"""Several copies of one model behind one user model or chat model.

A simulation's scale lives in its engines; the driver that runs the conversations stays one
process and the only writer. :class:`Replicated` spreads the turns over several backends:

- **sticky routing**: a conversation's turns go to the replica that served its last turn (which
  holds its prefix in its cache); a new conversation goes to the least loaded replica;
- **faults**: a turn whose replica died or could not be reached is asked again of another one
  (its seed is the same, so it is the turn it would have been); the count is in the run's
  summary (``reasked``); with every replica gone, the error stops the run.

Backends are Ray actors, each owning one local engine (``hf:`` or ``vllm:``) placed anywhere in
a Ray cluster (:func:`ray_replicas`; Ray restarts an actor whose process or node died), or
OpenAI-compatible servers, one per base URL (no Ray needed).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass, replace
from typing import Any

from ...errors import ConfigurationError, UserError
from ..base import ChatReply, SamplingSettings, UserDraft, UserTurnRequest, close, forget_conversations, sampling_of
from ..handle import ConversationHandle, Handles
from ..retry import ConnectionLost, RequestTimeout

log = logging.getLogger(__name__)


class Router:
    """Which replica serves a conversation: the one that served its last turn, else the least loaded."""

    def __init__(self, replicas: int, max_homes: int = 1 << 20):
        self.load = [0] * replicas  #: turns in flight per replica
        self.homes: OrderedDict[str, int] = OrderedDict()  #: conversation -> replica that holds its prefix
        self.max_homes = max_homes

    def pick(self, key: str | None, avoid: Set[int] = frozenset()) -> int:
        home = self.homes.get(key) if key is not None else None
        if key is not None and home is not None and home not in avoid:
            self.homes.move_to_end(key)
            return home
        choices = [i for i in range(len(self.load)) if i not in avoid] or list(range(len(self.load)))
        return min(choices, key=lambda i: (self.load[i], i))

    def settle(self, key: str | None, replica: int) -> None:
        if key is None:
            return
        self.homes[key] = replica
        self.homes.move_to_end(key)
        while len(self.homes) > self.max_homes:
            self.homes.popitem(last=False)

    def forget(self, key: str | None) -> None:
        if key is not None:
            self.homes.pop(key, None)


def _ray_errors() -> tuple[type[BaseException], ...]:
    try:
        from ray.exceptions import ActorUnavailableError, RayActorError
    except ImportError:
        return ()
    return (RayActorError, ActorUnavailableError)


class Replicated:
    """One user model or chat model over several backends (see the module's text)."""

    remote = True  #: answers come back in no order userlm fixes

    def __init__(self, name: str, backends: Sequence[Any], *, retries: int | None = None, sampling: SamplingSettings | None = None,
                 restart_wait_s: float | None = None):
        if not backends:
            raise ConfigurationError(f"{name}: no replicas")
        self.name = name
        if sampling is not None:
            self.sampling = sampling  #: every replica's (a run records it)
        self.backends = list(backends)
        self.router = Router(len(self.backends))
        self.reasked = 0
        self.retries = retries if retries is not None else 2 * len(self.backends)
        #: how long a turn waits for a replica to come back once every one has failed (Ray restarts
        #: them); None: ``retries`` rounds of a short back-off (servers, which nothing restarts)
        self.restart_wait_s = restart_wait_s
        self.down: str | None = None  #: why every replica stayed down past the wait: later turns fail at once
        self._lost: tuple[type[BaseException], ...] = (ConnectionLost, RequestTimeout, *_ray_errors())

    async def _ask(self, key: str | None, call) -> Any:
        avoid: set[int] = set()
        all_down_since: float | None = None
        attempt = 0
        while True:
            if self.down is not None:
                raise ConnectionLost(self.down)
            replica = self.router.pick(key, avoid)
            self.router.load[replica] += 1
            try:
                result = await call(self.backends[replica])
            except self._lost as exc:
                attempt += 1
                if self.restart_wait_s is None and attempt > self.retries:
                    raise
                self.reasked += 1
                self.router.forget(key)
                avoid.add(replica)
                if len(avoid) == len(self.backends):  # every replica failed: wait for one to come back
                    avoid.clear()
                    now = time.monotonic()
                    all_down_since = all_down_since if all_down_since is not None else now
                    if self.restart_wait_s is not None and now - all_down_since >= self.restart_wait_s:
                        self.down = (f"every replica of {self.name} stayed down for over {self.restart_wait_s:g} s "
                                     f"(--replica-restart-wait; last: {type(exc).__name__})")
                        raise ConnectionLost(self.down) from exc
                    await asyncio.sleep(min(2.0 ** min(attempt, 10) * 0.1, 5.0))
                log.info("%s: replica %d failed (%s); asking again elsewhere", self.name, replica, type(exc).__name__)
                continue
            finally:
                self.router.load[replica] -= 1
            self.router.settle(key, replica)
            return result

    async def draft(self, request: UserTurnRequest) -> UserDraft:
        return await self._ask(request.conversation_key, lambda backend: backend.draft(request))

    async def reply(self, messages: list[dict[str, str]], *, seed: int | None = None,
                    conversation: ConversationHandle | None = None) -> ChatReply:
        key = conversation.id if conversation is not None else None
        return await self._ask(key, lambda backend: backend.reply(messages, seed=seed, conversation=conversation))

    def forget_conversations(self) -> None:
        self.router.homes.clear()
        for backend in self.backends:
            forget_conversations(backend)

    async def aclose(self) -> None:
        for backend in self.backends:
            await close(backend)

    def can_map(self) -> bool:
        """Whether every replica runs its model in a process of its own (Ray actors), so that
        :meth:`map_shards` can hand it work on its model."""
        return all(isinstance(b, RayReplica) for b in self.backends)

    async def map_shards(self, fn: Callable[..., Any], items: list, **options: Any) -> list:
        """``fn(model, shard, **options)`` on every replica, each on its share of ``items``
        (every K-th item, K replicas); the replicas' results, in replica order. ``fn`` must be
        importable by name (a module-level function), as Ray sends it by reference."""
        shards = [items[k :: len(self.backends)] for k in range(len(self.backends))]
        return list(await asyncio.gather(*[b.map(fn, shard, **options) for b, shard in zip(self.backends, shards) if shard]))

    def shutdown(self) -> None:
        """Stop the replicas for good (Ray actors end with the driver anyway)."""
        for backend in self.backends:
            if isinstance(backend, RayReplica):
                backend.shutdown()


# --- Ray -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaPlacement:
    """What each replica asks of the cluster."""

    cpus: float = 1.0
    gpus: float | None = None  #: None: 1 for a vllm: replica on a cluster with GPUs, else 0
    max_restarts: int = -1  #: Ray restarts a dead replica this often (-1: always)
    ray_logs: bool = False  #: show Ray's own log lines (--verbose)
    restart_wait_s: float = 300.0  #: how long turns wait for Ray to restart replicas once every one is down


#: how long the head's port may take to accept a connection before --ray gives up on it
PROBE_S = 10.0


def _probe(address: str) -> None:
    """Fail at once, in one sentence, where nothing listens at ``address`` (Ray itself waits on it
    for minutes, printing its own warnings)."""
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--ray {address}: give auto or the head's HOST:PORT (its GCS port, 6379 unless the head was started "
                        "with another --port).")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_S):
            pass
    except OSError as exc:
        why = "connection refused" if isinstance(exc, ConnectionRefusedError) else (exc.strerror or type(exc).__name__)
        raise UserError(f"--ray {address}: nothing answers there ({why}); start the cluster's head there "
                        f"(ray start --head --port {port}) or give its address.") from None


def connect(address: str, logs: bool = False) -> None:
    """Join the Ray cluster at ``address``; ``auto``: the cluster this machine belongs to, or a new
    local one when there is none. Ray's own log lines are shown only with ``logs``."""
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray; install it with pip install 'userlm[ray]'.") from None
    if ray.is_initialized():
        return
    from ray.exceptions import AuthenticationError

    if address != "auto":
        _probe(address)
    if not logs:  # the C++ core's own lines (connection retries, warnings) too
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    quiet = dict(logging_level=logging.INFO if logs else logging.CRITICAL, log_to_driver=logs, configure_logging=True)
    try:
        if address == "auto":
            try:
                ray.init(address="auto", **quiet)
            except ConnectionError as exc:
                if _refused_token(exc):
                    raise
                ray.init(include_dashboard=False, **quiet)
            return
        ray.init(address=address, **quiet)
    except (AuthenticationError, ConnectionError) as exc:
        if _refused_token(exc):
            raise UserError(f"--ray {address}: the cluster refused this process's token; set RAY_AUTH_MODE=token and "
                            "RAY_AUTH_TOKEN to the cluster's token (or put it in ~/.ray/auth_token) and run again.") from None
        raise UserError(f"--ray {address}: cannot join that Ray cluster ({exc}); check the address (host:port of its head).") from None


def _refused_token(exc: BaseException | None) -> bool:
    """Whether Ray's failure to connect was the cluster's token authentication refusing this process
    (Ray wraps that in a ConnectionError whose cause's text carries the refusal)."""
    from ray.exceptions import AuthenticationError

    while exc is not None:
        if isinstance(exc, AuthenticationError) or "InvalidAuthToken" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class _Actor:
    """A replica: one local model in a Ray worker process, made there by ``make``.

    The first time, the model is made by :meth:`load`, which the driver calls once the actor runs
    (so that a replica that cannot load, or dies loading, is told apart from one that cannot
    start, and named with its node); an actor Ray restarted makes it as it starts, so that it is
    not up again (and asked turns) before its model is."""

    def __init__(self, make: Callable[[], Any]):
        import ray

        self.make = make
        self.model: Any = None
        self.handles = Handles()  # a request's handle arrives as a copy: the token ids kept for it live here
        if ray.get_runtime_context().was_current_actor_reconstructed:
            self._model()

    def where(self) -> tuple[str, str]:
        """The node this replica runs on: its address and Ray's id for it."""
        import ray

        return ray.util.get_node_ip_address(), ray.get_runtime_context().get_node_id()

    def ready(self) -> int:
        import os

        return os.getpid()

    def load(self) -> int:
        self._model()
        return self.ready()

    def _model(self) -> Any:
        if self.model is None:
            self.model = self.make()
        return self.model

    async def draft(self, request: UserTurnRequest) -> UserDraft:
        request.conversation = self.handles.adopt(request.conversation)
        return await self._model().draft(request)

    async def reply(self, messages: list[dict[str, str]], seed: int | None, conversation: ConversationHandle | None) -> ChatReply:
        return await self._model().reply(messages, seed=seed, conversation=self.handles.adopt(conversation))

    def forget_conversations(self) -> None:
        self.handles.clear()
        if self.model is not None:
            forget_conversations(self.model)

    def map(self, fn: Callable[..., Any], items: list, **options: Any) -> Any:
        return fn(self._model(), items, **options)


def _slim(handle: ConversationHandle | None) -> ConversationHandle | None:
    """The handle as a replica is sent it: its id and seed (the token ids its model keeps live in the replica)."""
    return None if handle is None else ConversationHandle(handle.id, handle.seed)


class RayReplica:
    """The driver's handle on one replica actor."""

    def __init__(self, handle: Any, index: int):
        self.handle, self.index = handle, index

    async def draft(self, request: UserTurnRequest) -> UserDraft:
        return await self.handle.draft.remote(replace(request, conversation=_slim(request.conversation)))

    async def reply(self, messages: list[dict[str, str]], *, seed: int | None = None,
                    conversation: ConversationHandle | None = None) -> ChatReply:
        return await self.handle.reply.remote(messages, seed, _slim(conversation))

    def forget_conversations(self) -> None:
        self.handle.forget_conversations.remote()

    async def map(self, fn: Callable[..., Any], items: list, **options: Any) -> Any:
        return await self.handle.map.remote(fn, items, **options)

    def pid(self) -> int:
        import ray

        return ray.get(self.handle.ready.remote())

    def shutdown(self) -> None:
        import ray

        ray.kill(self.handle, no_restart=True)


def replica_gpus(spec: str, cluster: dict[str, float]) -> float:
    """The GPUs a replica asks for when ``--replica-gpus`` is not given: one for a ``vllm:`` engine
    on a cluster that has GPUs (a forgotten flag must not put it on the CPU), none otherwise."""
    return 1.0 if spec.startswith("vllm:") and cluster.get("GPU", 0) > 0 else 0.0


def ray_replicas(spec: str, make: Callable[[], Any], count: int, address: str,
                 placement: ReplicaPlacement = ReplicaPlacement(), sampling: SamplingSettings | None = None) -> Replicated:
    """``count`` replicas of ``spec`` (an ``hf:`` or ``vllm:`` model) as Ray actors, each made in
    its own process by ``make`` (a picklable factory from the registry) and loaded before this
    returns (so a model that cannot load fails the run at once, in one sentence)."""
    connect(address, placement.ray_logs)
    import ray

    gpus = placement.gpus if placement.gpus is not None else replica_gpus(spec, ray.cluster_resources())
    actor = ray.remote(_Actor).options(num_cpus=placement.cpus, num_gpus=gpus, max_restarts=placement.max_restarts,
                                       max_task_retries=0, max_concurrency=1024)
    handles = [actor.remote(make) for _ in range(count)]
    try:
        _load(spec, handles)
    except BaseException:
        for h in handles:
            ray.kill(h, no_restart=True)
        raise
    return Replicated(f"{spec}", [RayReplica(h, i) for i, h in enumerate(handles)], sampling=sampling,
                      restart_wait_s=placement.restart_wait_s)


def _load(spec: str, handles: list[Any]) -> None:
    """Start every replica and load its model; a replica that cannot is one sentence naming its node."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    def cause_of(exc: BaseException) -> BaseException:
        return exc.cause if isinstance(exc, RayTaskError) and getattr(exc, "cause", None) is not None else exc

    try:
        nodes = ray.get([h.where.remote() for h in handles])
    except (RayTaskError, RayActorError) as exc:
        raise UserError(f"{spec}: a replica could not start ({type(cause_of(exc)).__name__}: {cause_of(exc)}).") from None
    loading = {h.load.remote(): node for h, node in zip(handles, nodes)}
    while loading:
        done, _ = ray.wait(list(loading), num_returns=1)
        (ip, node_id) = loading.pop(done[0])
        where = f"the replica on node {ip} (Ray node {node_id[:8]})"
        try:
            ray.get(done[0])
        except RayTaskError as exc:
            cause = cause_of(exc)
            said = str(cause).rstrip(".") if isinstance(cause, UserError) else f"{type(cause).__name__}: {cause}"
            raise UserError(f"{spec}: {where} could not load its model ({said}); every node a replica may run on needs "
                            "what loading it needs there: the model at the spec's path (or a hub id it can reach) and its "
                            "engine installed.") from None
        except RayActorError:
            raise UserError(f"{spec}: {where} died while loading its model (killed, or out of memory there); give the "
                            "replicas more memory (fewer per node) and run again.") from None


def server_replicas(name: str, backends: Sequence[Any]) -> Replicated:
    """One model over several OpenAI-compatible servers (``--user-base-url URL,URL``)."""
    return Replicated(name, backends, sampling=sampling_of(backends[0]))
