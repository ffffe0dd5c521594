"""Step results kept in the store, so a response run that waited for people carries on where it was.

A response that needs approval suspends its flow run (``flows/lifecycle.py``): no thread, slot or
server request while it waits. The answer makes Prefect schedule the same run again, and it runs
from its first step; every step done before returns its kept result instead of running again,
so nothing is measured, notified or done twice.

* :data:`RESUMABLE` is the steps' cache policy: a step's key is its run, the step, its position
  among that step's calls in this execution of the run, and its inputs. The position keeps a
  verification that measures the same thing five times from reading one measurement five times;
  the inputs keep a run whose path changed (an incident closed meanwhile) from taking another
  call's result.
* :class:`ResumableTask` (made with :func:`resumable`) is a step with that policy that, when its run
  is executed again, gives its kept result back *without a new task run*: Prefect would create one
  per kept step and show it *Cached* (a second copy of every step before the question on the run
  page, and its events and records on the server). Each execution looks up kept results until the
  first step that has none; from there on steps run as usual (a later kept one is still Cached).
* :class:`StoreResults` is where the results live: the responder's store (``core/store/runs.py``),
  which every responder on a shared PostgreSQL store reads. A result is what a step returns
  (evidence, plans, outcomes): the runbooks keep secrets out of those (a plan names its target;
  the DSN is looked up when the action runs), so none is stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import asdict, dataclass, is_dataclass
from collections.abc import Callable, Iterable
from typing import Any

from prefect import Task
from prefect.cache_policies import CachePolicy
from prefect.context import FlowRunContext, TaskRunContext
from prefect.results import get_result_store
from prefect.states import Completed
from prefect.utilities.callables import get_call_parameters
from prefect.exceptions import ObjectAlreadyExists
from prefect.filesystems import WritableFileSystem
from pydantic import BaseModel

from core.services import current

RESULTS_BLOCK = "responder-store-results/results"  # the saved block runbook flows name as result storage


@dataclass
class Resumable(CachePolicy):
    """Key = run, step, position among this step's calls in this execution, inputs (see module doc)."""

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str | None:
        flow_run = FlowRunContext.get()
        run = task_ctx.task_run
        if flow_run is None or flow_run.flow_run is None:
            return None  # a step called outside a flow run (a test calling it directly): nothing to resume
        positions = flow_run.task_run_dynamic_keys  # Prefect's per-execution counters; ours are prefixed
        retry_of = f"responder:run:{run.id}"
        if retry_of in positions:  # a retry of the same call keeps its position
            position = int(positions[retry_of])
        else:
            position = positions[retry_of] = _next_position(positions, task_ctx.task.task_key)
        return step_key(run.flow_run_id, task_ctx.task.task_key, position, inputs)


def _position_counter(task_key: str) -> str:
    """Where an execution counts a step's calls, among Prefect's own counters (ours are prefixed)."""
    return f"responder:position:{task_key}"


def _next_position(positions: dict[str, Any], task_key: str) -> int:
    counter = _position_counter(task_key)
    position = positions[counter] = int(positions.get(counter, -1)) + 1
    return position


def step_key(flow_run_id: Any, task_key: str, position: int, inputs: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(_stable(inputs), sort_keys=True, default=repr).encode()).hexdigest()
    return hashlib.sha256(f"{flow_run_id}/{task_key}/{position}/{digest}".encode()).hexdigest()


def _stable(value: Any) -> Any:
    """Inputs as plain JSON data, the same in every process (Prefect's own input hash falls back to
    pickling, whose bytes differ between processes: a run carried on by another process, or after a
    restart, would not find its results). What has no plain form is keyed by its repr."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")  # a SecretStr dumps as asterisks
    if is_dataclass(value) and not isinstance(value, type):
        return _stable(asdict(value))
    if isinstance(value, dict):
        return {str(k): _stable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_stable(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


RESUMABLE = Resumable()

_NOT_KEPT = object()
_LOOKING = "responder:restoring"  # in an execution's counters: False once a step had no kept result


class ResumableTask(Task):
    """A step kept with :data:`RESUMABLE` that an execution of its run after the first gives back
    from the store without creating a task run (see the module doc)."""

    def __call__(self, *args: Any, return_state: bool = False, wait_for: Any = None, **kwargs: Any) -> Any:
        if wait_for is None:
            kept = _kept_result(self, args, kwargs)
            if kept is not _NOT_KEPT:
                return Completed(data=kept) if return_state else kept
        return super().__call__(*args, return_state=return_state, wait_for=wait_for, **kwargs)

    def with_options(self, **options: Any) -> "ResumableTask":
        made = super().with_options(**options)  # Prefect builds a plain Task
        made.__class__ = type(self)
        return made


def resumable(fn: Callable[..., Any] | None = None, **options: Any) -> Any:
    """``@task`` for a step whose result is kept: ``@resumable(name="acknowledge", retries=3)``."""
    options.setdefault("cache_policy", RESUMABLE)

    def make(function: Callable[..., Any]) -> ResumableTask:
        return ResumableTask(fn=function, **options)

    return make(fn) if fn is not None else make


def _kept_result(task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The step's kept result from an earlier execution of this run, or ``_NOT_KEPT``.

    Keyed exactly as :meth:`Resumable.compute_key` keys the call (its position among the step's
    calls in this execution, its inputs as Prefect binds them); when nothing is kept the position
    is given back, so the task run Prefect then creates takes the same one."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None or TaskRunContext.get() is not None \
            or task.cache_policy is not RESUMABLE:
        return _NOT_KEPT
    positions = context.task_run_dynamic_keys
    if positions.get(_LOOKING) is False:
        return _NOT_KEPT
    counter = _position_counter(task.task_key)
    before = positions.get(counter)
    key = step_key(context.flow_run.id, task.task_key, _next_position(positions, task.task_key),
                   get_call_parameters(task.fn, args, kwargs))
    try:
        return get_result_store().update_for_task(task).read(key).result
    except Exception:  # noqa: BLE001 - not kept (the first execution, or a step that had not finished): run it
        positions[_LOOKING] = False
        if before is None:
            positions.pop(counter, None)
        else:
            positions[counter] = before
        return _NOT_KEPT


class StoreResults(WritableFileSystem):
    """Prefect result storage in the responder's store: the store of the services bound to the run."""

    _block_type_name = "Responder store results"
    _block_type_slug = "responder-store-results"
    _description = "Step results of response runs, kept in the responder's store so any responder can resume them."

    def read_path(self, path: str, _sync: bool = True) -> bytes:
        content = current().store.get_result(path)
        if content is None:
            raise FileNotFoundError(f"no step result {path!r} in the responder's store")
        return content

    def write_path(self, path: str, content: bytes, _sync: bool = True) -> str:
        current().store.put_result(path, content)
        return path

    async def aread_path(self, path: str) -> bytes:
        return self.read_path(path)

    async def awrite_path(self, path: str, content: bytes) -> str:
        return self.write_path(path, content)


async def register_result_storage(flows: Iterable[Any] = (), attempts: int = 5) -> StoreResults:
    """Register the block type, save the block runbook flows name (idempotent; at start-up), and give
    ``flows`` the saved block itself.

    By name, each execution of a flow would load the block from the server (a request and a
    ``prefect.block.….loaded`` event, twice per response: measured with bench/response_cost.py).
    Several responders starting at once race to create the same type, schema and block: the loser's
    create is refused as already existing, and its next attempt finds what the winner made."""
    for attempt in range(attempts):
        try:
            await StoreResults.aregister_type_and_schema()
            block = StoreResults()
            await block.asave(RESULTS_BLOCK.split("/", 1)[1], overwrite=True)
            for flow in flows:
                flow.result_storage = block
            return block
        except ObjectAlreadyExists:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.2 * (attempt + 1))
