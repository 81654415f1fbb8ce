"""An in-process stand-in for the `ray` module, for the local search's Ray path.

Tasks run on threads of this process, as many at once as the fake cluster has CPUs (the
rest wait in a queue, as on a cluster); an actor is an object whose methods run one at a
time. Every task's function and arguments go through pickle first, as Ray would ship
them to a node, so a search that hands Ray something it cannot send fails here too.
The cluster's address is a socket listening on 127.0.0.1 that answers the opening of a
gRPC connection as Ray's servers do (an HTTP/2 SETTINGS frame) and nothing more, so that
the search's check of the address finds a cluster there. The fake records
what the search asked of it::

    cluster = FakeRayCluster(cpus=2)
    monkeypatch.setitem(sys.modules, "ray", cluster.module())
    run_search(..., options=SearchOptions(ray_address=cluster.address))
    assert cluster.max_running == 2
    cluster.close()
"""

from __future__ import annotations

import itertools
import pickle
import socket
import threading
import types
from collections.abc import Callable
from concurrent import futures
from typing import Any

from broker.local.cluster import HTTP2_EMPTY_SETTINGS, HTTP2_PREFACE

_CLUSTERS: dict[int, FakeRayCluster] = {}
# what the search's address check sends, and the empty SETTINGS frame a server answers
_CLIENT_OPENING = HTTP2_PREFACE + HTTP2_EMPTY_SETTINGS
_SERVER_SETTINGS = HTTP2_EMPTY_SETTINGS
_NEXT_CLUSTER = itertools.count(1)


class FakeObjectRef:
    """A task's result, or a value put into the object store."""

    def __init__(self, future: futures.Future[Any]) -> None:
        self.future = future

    def __reduce__(self) -> Any:
        raise TypeError(
            "an ObjectRef inside a task argument is not resolved by Ray; pass it at "
            "the top level or put the value in"
        )


class FakeRayCluster:
    """A Ray cluster inside this process.

    Args:
        cpus: the cluster's CPUs, which is as many tasks as run at once.
        task_error: raised by every task instead of running it (for example the
            ImportError of a node without torch).
        unreachable: `init` raises ConnectionError, as Ray does for a service at the
            address that is not a Ray cluster.
        cleanup_error: raised by `cancel` and `kill` after they are recorded, as Ray
            raises when the node of a task or actor has been lost.
    """

    def __init__(
        self,
        cpus: int = 2,
        gpus: int = 0,
        task_error: BaseException | None = None,
        unreachable: bool = False,
        cleanup_error: BaseException | None = None,
    ) -> None:
        self.cpus = cpus
        self.gpus = gpus
        self.task_error = task_error
        self.unreachable = unreachable
        self.cleanup_error = cleanup_error
        self.initialized = False
        self.init_calls: list[dict[str, Any]] = []
        self.remote_options: list[dict[str, Any]] = []
        self.task_options: list[dict[str, Any]] = []
        self.killed: list[Any] = []
        self.puts = 0
        self.tasks_submitted = 0
        self.cancelled: list[FakeObjectRef] = []
        self.running = 0
        self.max_running = 0
        self._lock = threading.Lock()
        self._pool = futures.ThreadPoolExecutor(max_workers=max(cpus, gpus))
        self._actors: dict[int, Any] = {}
        self._actor_locks: dict[int, threading.Lock] = {}
        self._submitted: list[futures.Future[Any]] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self._closing = threading.Event()
        self._server = threading.Thread(target=self._answer_handshakes, daemon=True)
        self._server.start()
        self.address = f"ray://127.0.0.1:{self._listener.getsockname()[1]}"
        self.id = next(_NEXT_CLUSTER)
        _CLUSTERS[self.id] = self

    def module(self) -> types.ModuleType:
        """A module object to install as `sys.modules["ray"]`."""
        module = types.ModuleType("ray")
        names = (
            "init",
            "is_initialized",
            "remote",
            "put",
            "get",
            "wait",
            "cancel",
            "kill",
        )
        for name in names:
            setattr(module, name, getattr(self, name))
        module.cluster_resources = self.cluster_resources  # type: ignore[attr-defined]
        return module

    def close(self) -> None:
        """Wait for every task, then forget the cluster and close its address."""
        self._pool.shutdown(wait=True)
        self._closing.set()
        self._server.join()
        self._listener.close()
        _CLUSTERS.pop(self.id, None)

    @property
    def unfinished(self) -> int:
        """Tasks submitted that have neither returned nor been cancelled."""
        return sum(not f.done() for f in self._submitted)

    # --- the ray module's functions the search calls ---------------------------------

    def init(self, address: str | None = None, **kwargs: Any) -> None:
        self.init_calls.append({"address": address, **kwargs})
        if self.unreachable:
            raise ConnectionError(f"could not connect to {address}")
        self.initialized = True

    def is_initialized(self) -> bool:
        return self.initialized

    def cluster_resources(self) -> dict[str, float]:
        resources = {"CPU": float(self.cpus), "memory": 8e9}
        if self.gpus:
            resources["GPU"] = float(self.gpus)
        return resources

    def kill(self, actor: Any) -> None:
        self.killed.append(actor)
        if self.cleanup_error is not None:
            raise self.cleanup_error

    def put(self, value: Any) -> FakeObjectRef:
        self.puts += 1
        future: futures.Future[Any] = futures.Future()
        future.set_result(pickle.loads(pickle.dumps(value)))
        return FakeObjectRef(future)

    def remote(self, *args: Any, **options: Any) -> Any:
        """`ray.remote(f)`, or `ray.remote(max_retries=0)(f)` with options."""
        if args:
            return self._remote(args[0], {})
        return lambda target: self._remote(target, options)

    def _remote(self, target: Any, options: dict[str, Any]) -> Any:
        self.remote_options.append({"target": target.__name__, **options})
        if isinstance(target, type):
            return _ActorClass(self, target)
        return _RemoteFunction(self, target, options)

    def get(self, ref: Any, timeout: float | None = None) -> Any:
        if isinstance(ref, list):
            return [self.get(r, timeout) for r in ref]
        return ref.future.result(timeout)

    def wait(
        self,
        refs: list[FakeObjectRef],
        *,
        num_returns: int = 1,
        timeout: float | None = None,
    ) -> tuple[list[FakeObjectRef], list[FakeObjectRef]]:
        when = futures.FIRST_COMPLETED if num_returns == 1 else futures.ALL_COMPLETED
        futures.wait([r.future for r in refs], timeout=timeout, return_when=when)
        done = [r for r in refs if r.future.done()][:num_returns]
        return done, [r for r in refs if r not in done]

    def cancel(self, ref: FakeObjectRef, *, force: bool = False) -> None:
        self.cancelled.append(ref)
        if self.cleanup_error is not None:
            raise self.cleanup_error
        ref.future.cancel()  # a queued task never starts; a running one finishes

    # --- internals --------------------------------------------------------------------

    def _answer_handshakes(self) -> None:
        """Answer each connection's HTTP/2 preface with an empty SETTINGS frame."""
        while not self._closing.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(2.0)
                received = b""
                try:
                    while len(received) < len(_CLIENT_OPENING):
                        chunk = connection.recv(len(_CLIENT_OPENING) - len(received))
                        if not chunk:
                            break
                        received += chunk
                    connection.sendall(_SERVER_SETTINGS)
                except OSError:
                    continue

    def _submit(self, function: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        args = tuple(
            a.future.result() if isinstance(a, FakeObjectRef) else a for a in args
        )
        payload = pickle.dumps((function, args, kwargs))
        self.tasks_submitted += 1
        future = self._pool.submit(self._run, payload)
        self._submitted.append(future)
        return FakeObjectRef(future)

    def _run(self, payload: bytes) -> Any:
        function, args, kwargs = pickle.loads(payload)
        with self._lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            if self.task_error is not None:
                raise self.task_error
            return function(*args, **kwargs)
        finally:
            with self._lock:
                self.running -= 1

    def _new_actor(self, cls: type, args: Any, kwargs: Any) -> _ActorHandle:
        with self._lock:
            actor_id = len(self._actors) + 1
            self._actors[actor_id] = cls(*args, **kwargs)
            self._actor_locks[actor_id] = threading.Lock()
        return _ActorHandle(self.id, actor_id)

    def _call(self, actor_id: int, method: str, args: Any, kwargs: Any) -> Any:
        args, kwargs = pickle.loads(pickle.dumps((args, kwargs)))
        future: futures.Future[Any] = futures.Future()
        with self._actor_locks[actor_id]:
            try:
                future.set_result(
                    getattr(self._actors[actor_id], method)(*args, **kwargs)
                )
            except Exception as exc:
                future.set_exception(exc)
        return FakeObjectRef(future)


class _RemoteFunction:
    def __init__(
        self,
        cluster: FakeRayCluster,
        function: Callable[..., Any],
        options: dict[str, Any],
    ) -> None:
        self._cluster = cluster
        self._function = function
        self.options_given = dict(options)

    def options(self, **options: Any) -> _RemoteFunction:
        return _RemoteFunction(
            self._cluster, self._function, {**self.options_given, **options}
        )

    def remote(self, *args: Any, **kwargs: Any) -> FakeObjectRef:
        self._cluster.task_options.append(dict(self.options_given))
        return self._cluster._submit(self._function, args, kwargs)


class _ActorClass:
    def __init__(self, cluster: FakeRayCluster, cls: type) -> None:
        self._cluster = cluster
        self._cls = cls

    def remote(self, *args: Any, **kwargs: Any) -> _ActorHandle:
        return self._cluster._new_actor(self._cls, args, kwargs)


class _ActorHandle:
    """Pickles to its ids, so a task receives a handle to the same actor."""

    def __init__(self, cluster_id: int, actor_id: int) -> None:
        self._cluster_id = cluster_id
        self._actor_id = actor_id

    def __reduce__(self) -> Any:
        return (_ActorHandle, (self._cluster_id, self._actor_id))

    def __getattr__(self, method: str) -> _ActorMethod:
        if method.startswith("_"):
            raise AttributeError(method)
        return _ActorMethod(self._cluster_id, self._actor_id, method)


class _ActorMethod:
    def __init__(self, cluster_id: int, actor_id: int, method: str) -> None:
        self._cluster_id = cluster_id
        self._actor_id = actor_id
        self._method = method

    def remote(self, *args: Any, **kwargs: Any) -> FakeObjectRef:
        cluster = _CLUSTERS[self._cluster_id]
        return cluster._call(self._actor_id, self._method, args, kwargs)
