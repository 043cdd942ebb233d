"""Where independent simulation tasks run: this machine's cores, or a Ray cluster.

`Backend.map(fn, items, shared, on_done)` returns `[fn(item, shared) for item in items]`, in order,
calling `on_done(result)` as each finishes. `shared` (the prepared workload) reaches every worker once:
inherited by forked worker processes (local), or put once in Ray's object store (ray). `fn` must be a
module-level function, and results depend on (item, shared) only, so every backend gives the same
numbers bit for bit. `compare-policies` (sweep points) and `fleet` (replica shards) both use it.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from mtbench.errors import MtbenchError

BACKEND_NAMES = ("local", "ray")
RAY_INSTALL_HINT = "pip install -e '.[cluster]'"
RAY_CONNECT_TIMEOUT_S = 5.0
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + empty SETTINGS
HTTP2_SETTINGS = 4

Task = Callable[[Any, Any], Any]

_SHARED: dict[str, Any] = {}


class Backend(ABC):
    name: str

    @abstractmethod
    def map(self, fn: Task, items: Sequence[Any], shared: Any,
            on_done: Callable[[Any], None] | None = None) -> list[Any]:
        """[fn(item, shared) for item in items], computed wherever this backend runs tasks."""

    def close(self) -> None:
        """Release what the backend started."""


class LocalBackend(Backend):
    """Worker processes on this machine (forked: `shared` is inherited, never pickled); 1 runs in-process."""

    name = "local"

    def __init__(self, workers: int | None = None) -> None:
        if workers is not None and workers < 1:
            raise MtbenchError(f"--workers must be >= 1, got {workers}")
        self.workers = workers or os.cpu_count() or 1

    def map(self, fn: Task, items: Sequence[Any], shared: Any,
            on_done: Callable[[Any], None] | None = None) -> list[Any]:
        workers = max(1, min(self.workers, len(items)))
        results: list[Any] = [None] * len(items)
        if workers == 1:
            for index, item in enumerate(items):
                results[index] = fn(item, shared)
                if on_done:
                    on_done(results[index])
            return results
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_set_shared, initargs=(shared,)) as pool:
            futures = {pool.submit(_call_with_shared, fn, item): index for index, item in enumerate(items)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                if on_done:
                    on_done(results[futures[future]])
        return results


def _set_shared(shared: Any) -> None:
    _SHARED["value"] = shared


def _call_with_shared(fn: Task, item: Any) -> Any:
    return fn(item, _SHARED["value"])


class RayBackend(Backend):
    """Ray tasks: `shared` is put once in the object store, each item is one task.

    address None starts a local Ray instance (`ray.init()`); "host:port" joins a running cluster and
    "ray://host:port" uses Ray Client (either checked to answer first, so a dead or silent address is one
    line, not a hang).
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        ray = import_ray()
        if address is not None:
            _check_answers(address)
        self._started = not ray.is_initialized()
        if self._started:
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                       "configure_logging": False}
            if address is None:
                options["num_cpus"] = num_cpus
            try:
                ray.init(address=address, **options)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise MtbenchError(f"--ray-address {address}: cannot join the Ray cluster ({err})") from None
        self._ray = ray

    def map(self, fn: Task, items: Sequence[Any], shared: Any,
            on_done: Callable[[Any], None] | None = None) -> list[Any]:
        ray = self._ray
        shared_ref = ray.put(shared)
        remote = ray.remote(_ray_call)
        pending = {remote.remote(fn, item, shared_ref): index for index, item in enumerate(items)}
        results: list[Any] = [None] * len(items)
        waiting = list(pending)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            for ref in done:
                results[pending[ref]] = ray.get(ref)
                if on_done:
                    on_done(results[pending[ref]])
        return results

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()


def _ray_call(fn: Task, item: Any, shared: Any) -> Any:
    return fn(item, shared)


def import_ray() -> Any:
    """The ray module, or MtbenchError saying how to install the optional extra."""
    try:
        import ray
    except ImportError:
        raise MtbenchError(f"--backend ray needs the ray package: {RAY_INSTALL_HINT}") from None
    return ray


def _check_answers(address: str) -> None:
    """A Ray address ("host:port" of the cluster's GCS, or "ray://host:port" of its Ray Client server) must
    answer as a gRPC server within RAY_CONNECT_TIMEOUT_S: ray.init retries a silent address for minutes.

    Both are HTTP/2 servers, so the probe is HTTP/2's own handshake: send the client preface and an empty
    SETTINGS frame; a server's first frame back is its SETTINGS (frame type 4, RFC 9113 section 3.4)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise MtbenchError(f"--ray-address {address!r}: expected host:port, ray://host:port or auto")
    try:
        with socket.create_connection((host, int(port)), timeout=RAY_CONNECT_TIMEOUT_S) as connection:
            connection.settimeout(RAY_CONNECT_TIMEOUT_S)
            connection.sendall(HTTP2_PREFACE)
            head = b""
            while len(head) < 9 and (chunk := connection.recv(9 - len(head))):
                head += chunk
    except socket.timeout:
        raise MtbenchError(f"--ray-address {address}: no Ray cluster answers there (nothing came back within "
                           f"{RAY_CONNECT_TIMEOUT_S:g} s)") from None
    except OSError as err:
        raise MtbenchError(f"--ray-address {address}: no Ray cluster answers there ({err})") from None
    if len(head) < 9 or head[3] != HTTP2_SETTINGS:
        raise MtbenchError(f"--ray-address {address}: the server there is not a Ray cluster (no gRPC handshake)")


def check_backend(name: str, ray_address: str | None = None) -> None:
    """Refuse an unknown backend, a Ray that is not installed or an address that does not answer, before
    any work starts (`make_backend` starts the backend later)."""
    if name not in BACKEND_NAMES:
        raise MtbenchError(f"unknown backend {name!r} (choose from {', '.join(BACKEND_NAMES)})")
    if ray_address is not None and name != "ray":
        raise MtbenchError("--ray-address needs --backend ray")
    if name == "ray":
        import_ray()
        if ray_address is not None:
            _check_answers(ray_address)


def make_backend(name: str, workers: int | None = None, ray_address: str | None = None) -> Backend:
    """The backend `name` ("local" or "ray"); MtbenchError for an unknown name or an unusable Ray."""
    check_backend(name, ray_address)
    if name == "ray":
        return RayBackend(ray_address, num_cpus=workers)
    return LocalBackend(workers)
