"""Step results kept in the store, so a response run that waited for people carries on where it was.

A response that needs approval suspends its flow run (``flows/lifecycle.py``): no thread, slot or
server request while it waits. The answer makes Prefect schedule the same run again, and it runs
from its first step; every step done before returns its kept result instead of running again
(the Prefect UI shows it *Cached*), so nothing is measured, notified or done twice.

* :data:`RESUMABLE` is the steps' cache policy: a step's key is its run, the step, its position
  among that step's calls in this execution of the run, and its inputs. The position keeps a
  verification that measures the same thing five times from reading one measurement five times;
  the inputs keep a run whose path changed (an incident closed meanwhile) from taking another
  call's result.
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
from collections.abc import Iterable
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.context import FlowRunContext
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
            position = positions[retry_of]
        else:
            counter = f"responder:position:{task_ctx.task.task_key}"
            position = int(positions.get(counter, -1)) + 1
            positions[counter] = positions[retry_of] = position
        digest = hashlib.sha256(json.dumps(_stable(inputs), sort_keys=True, default=repr).encode()).hexdigest()
        return hashlib.sha256(f"{run.flow_run_id}/{task_ctx.task.task_key}/{position}/{digest}".encode()).hexdigest()


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
