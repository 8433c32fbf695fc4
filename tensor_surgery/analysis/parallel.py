"""Run per-tensor work in this process or as Ray tasks on a cluster, results streamed as they finish.

Ray is imported only when a Ray address is given: the in-process path never touches it, so the
CLI and the server start without it and work where it is not installed (it is the `cluster` extra).

Each task reads its tensors itself from a path every node sees (a shared file system), so only
the small argument tuples travel to the workers and only the small results travel back.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..errors import SurgeryError

CONNECT_TIMEOUT_S = 3.0  # a TCP probe of the head node before ray.init, which itself may wait minutes
LOCAL_PREFIX = "local:"
# A local Ray's agents are Python processes importing a lot: give them longer than Ray's default to
# register on a loaded machine. (The raylet's own wait for their ports is fixed: on a machine with
# several times more runnable processes than cores a local start can still time out.)
LOCAL_SYSTEM_CONFIG = {"agent_register_timeout_ms": 180_000}
JOIN_RETRIES = 4  # about a second each when the port answers with an error
JOIN_DEADLINE_S = 6.0  # joining gives up after this, however Ray's attempts go: with the probe, < 10 s
_JOIN_ENV = {"RAY_gcs_server_port_wait_time_s": str(JOIN_RETRIES)}

Progress = Callable[[int, int], None]  # (tasks done, tasks total)


class ClusterUnavailable(SurgeryError):
    """A Ray address was given and nothing answers there, or Ray is not installed."""

    code = "ray_unavailable"
    http_status = 503
    exit_code = 1


def run_tasks(
    fn: Callable[..., Any],
    tasks: Sequence[tuple],
    *,
    ray_address: str | None = None,
    progress: Progress | None = None,
) -> Iterator[tuple[tuple, Any]]:
    """Run `fn(*task)` for every task; return an iterator of `(task, result)` in completion order.

    - `fn`: a module-level function (Ray pickles it by reference; workers import its module).
    - `tasks`: a list of picklable argument tuples, e.g. `(model_path, [tensor names])`. Each task
      reads what it needs from the shared path; keep results small (dicts of numbers).
    - `ray_address`:
        - None: in this process, one task after another; Ray is not imported.
        - "auto": the running cluster named by RAY_ADDRESS or the last `ray start` on this machine.
        - "HOST:PORT" or "ray://HOST:PORT": that cluster's head node (GCS or Ray Client port).
        - "local:N": start a private local Ray with N CPUs on 127.0.0.1 (tests, benchmarks);
          it is shut down when the iterator finishes or is closed.
      If this process already holds a Ray connection (`ray.is_initialized()`), that is used as it
      is and left open. Connecting happens here, before the iterator is returned: an address
      that does not answer raises `ClusterUnavailable` within `CONNECT_TIMEOUT_S` (nothing
      listens) or `CONNECT_TIMEOUT_S + JOIN_DEADLINE_S` seconds (something listens but is not a
      Ray head that answers), before the caller has written anything.
    - `progress(done, total)`: called after each finished task.

    An exception raised by `fn` is re-raised from the iterator as the original exception (not
    Ray's wrapper); the tasks still queued are cancelled. Closing the iterator early (Ctrl-C,
    `break`) cancels them too.
    """
    tasks = list(tasks)
    if ray_address is None:
        return _run_local(fn, tasks, progress)
    ray, owned = _connect(ray_address)
    return _run_ray(ray, owned, fn, tasks, progress)


def _run_local(fn, tasks: list[tuple], progress: Progress | None) -> Iterator[tuple[tuple, Any]]:
    total = len(tasks)
    for done, task in enumerate(tasks, 1):
        result = fn(*task)
        if progress:
            progress(done, total)
        yield task, result


# -- Ray ----------------------------------------------------------------------------------------


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ClusterUnavailable(
            "Ray is not installed: install the cluster extra (pip install -e '.[cluster]') "
            "or run without --ray"
        ) from None
    return ray


def _connect(address: str):
    """Import Ray and connect (or start a local one). Returns (ray, whether we own the session)."""
    address = address.strip()
    if not address:
        raise ClusterUnavailable("empty Ray address: give auto, HOST:PORT, ray://HOST:PORT or local:N",
                                 field="ray")
    if address.startswith(LOCAL_PREFIX):
        cpus = _local_cpus(address)
        ray = _import_ray()
        if ray.is_initialized():
            return ray, False
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, _node_ip_address="127.0.0.1", _system_config=LOCAL_SYSTEM_CONFIG)
        return ray, True
    ray = _import_ray()
    if ray.is_initialized():
        return ray, False
    target = _resolve(address)
    _probe(address, target)
    outcome: dict = {}

    def join() -> None:
        try:
            with _connect_budget():
                ray.init(address=address, log_to_driver=False, configure_logging=False)
            outcome["ok"] = True
        except BaseException as e:  # Ray raises ConnectionError, RuntimeError, TimeoutError... by version
            outcome["error"] = e

    # A port that accepts and then says nothing holds each of Ray's attempts for its RPC deadline:
    # the deadline here is ours, whatever Ray does.
    worker = threading.Thread(target=join, name="ray-connect", daemon=True)
    worker.start()
    worker.join(JOIN_DEADLINE_S)
    if worker.is_alive():
        raise ClusterUnavailable(
            f"the Ray cluster at {address!r} did not answer within {JOIN_DEADLINE_S:g} s (something listens "
            "there, but not a Ray head node that answers). Check the address and `ray status` on the head",
            field="ray")
    if "error" in outcome:
        raise ClusterUnavailable(f"could not join the Ray cluster at {address!r}: {outcome['error']}",
                                 field="ray") from None
    return ray, False


@contextlib.contextmanager
def _connect_budget():
    """Ray retries a head that answers TCP but not as a GCS for ~20 s, one try a second (and a
    proxy or another service on the port does answer TCP): give it JOIN_RETRIES tries instead,
    (Ray's C++ client still prints a warning per try)."""
    saved = {k: os.environ.get(k) for k in _JOIN_ENV}
    os.environ.update(_JOIN_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _local_cpus(address: str) -> int:
    text = address[len(LOCAL_PREFIX):]
    if not text.isdigit() or not 1 <= int(text) <= 1024:
        raise ClusterUnavailable(f"{address!r}: local:N needs N, a number of CPUs from 1 to 1024", field="ray")
    return int(text)


def _resolve(address: str) -> tuple[str, int]:
    """The host and port that must answer for `address` (auto: RAY_ADDRESS or the last `ray start`)."""
    if address == "auto":
        from ray._private import services

        try:
            hostport = services.canonicalize_bootstrap_address_or_die("auto")
        except Exception as e:
            raise ClusterUnavailable(
                f"--ray auto found no running Ray cluster ({e}). Start one with `ray start --head`, "
                "or give its address (HOST:PORT) or set RAY_ADDRESS", field="ray") from None
        address = hostport
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ClusterUnavailable(
            f"Ray address {address!r} is not auto, HOST:PORT, ray://HOST:PORT or local:N", field="ray")
    return host.strip("[]"), int(port)


def _probe(address: str, target: tuple[str, int]) -> None:
    try:
        with socket.create_connection(target, timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        raise ClusterUnavailable(
            f"no Ray cluster answers at {address!r} ({target[0]}:{target[1]}: {e.strerror or e}). "
            "Check that the head node runs (`ray status`) and that this machine can reach its port",
            field="ray") from None


def _run_ray(ray, owned: bool, fn, tasks: list[tuple], progress: Progress | None):
    total = len(tasks)
    pending: dict = {}
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(fn)
        for task in tasks:
            pending[remote.remote(*task)] = task
        done = 0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                task = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    cause = getattr(e, "cause", None)
                    if isinstance(cause, BaseException):
                        raise cause from None
                    raise
                done += 1
                if progress:
                    progress(done, total)
                yield task, result
    finally:
        for ref in list(pending):
            try:
                ray.cancel(ref, force=True)
            except Exception:  # already finished or gone: nothing to cancel
                pass
        if owned:
            ray.shutdown()


def default_ray_address(flag: str | None) -> str | None:
    """The CLI's rule: `--ray ADDRESS` wins; `--ray env` takes RAY_ADDRESS (an error if unset)."""
    if flag == "env":
        env = os.environ.get("RAY_ADDRESS", "").strip()
        if not env:
            raise ClusterUnavailable("--ray env: RAY_ADDRESS is not set", field="ray")
        return env
    return flag
