"""Mitigations for PostgreSQL, Redis, files and configured commands, ready for the registry.

Each module holds plain typed functions in the style of :mod:`tasks.mitigations`: re-check,
then act; ``dry_run`` returns ``would_do``; nothing left to do returns ``not_needed``; a safety
check that says no raises ``ResponderError(REFUSED)``. ``ACTIONS`` lists them as
:class:`~tasks.base.Mitigation` entries to merge into ``REGISTRY``::

    REGISTRY = {m.name: m for m in (*CORE, *ACTIONS)}

Importing this package imports psycopg and redis (the probe modules it builds on).
"""

from __future__ import annotations

from tasks.actions import commands, files, postgres, redis
from tasks.actions import jobs, queues  # issue 5: queue, blocklist, flag and HTTP-job actions
from tasks.base import Mitigation, Risk

ACTIONS: tuple[Mitigation, ...] = (
    Mitigation("restart_service", Risk.RISKY, "Restart a service with its configured argv (seed 000)",
               commands.restart_service),
    Mitigation("cancel_backend", Risk.RISKY,
               "Cancel one long-running PostgreSQL query if it is still the same query (seed 001)",
               postgres.cancel_backend),
    Mitigation("terminate_backend", Risk.RISKY,
               "Terminate one PostgreSQL backend if it still runs the same query (seed 001 'kill if safe')",
               postgres.terminate_backend),
    Mitigation("terminate_idle_transaction", Risk.RISKY,
               "Terminate one PostgreSQL backend if it is still idle in the same transaction (seed 001 leak)",
               postgres.terminate_idle_transaction),
    Mitigation("clear_cache_namespace", Risk.RISKY,
               "Unlink the keys of one configured Redis cache prefix (SCAN + UNLINK)",
               redis.clear_cache_namespace),
    Mitigation("flush_database", Risk.RISKY,
               "FLUSHDB one Redis database, only where the configuration allows it (seed 000)",
               redis.flush_database),
    Mitigation("compress_old_logs", Risk.SAFE,
               "gzip old log files in configured directories, keeping mtimes (seed 002)",
               files.compress_old_logs),
    Mitigation("delete_old_files", Risk.SAFE,
               "Delete files past retention in configured directories (seed 002 find -mtime +7 -delete)",
               files.delete_old_files),
    Mitigation("remove_temp_files", Risk.SAFE,
               "Delete old temporary files in configured temp directories (seeds 001, 002)",
               files.remove_temp_files),
    Mitigation("run_configured_command", Risk.RISKY,
               "Run one configured argv command (no shell)",
               commands.run_configured_command),
    Mitigation("rollback_release", Risk.RISKY,
               "Roll a service back with its configured command (seeds 000, 001)",
               commands.rollback_release),
    Mitigation("scale_service", Risk.RISKY,
               "Scale a service with its configured command (seed 001)",
               commands.scale_service),
    Mitigation("move_to_dead_letter", Risk.RISKY,
               "Move stuck queue items (list or BullMQ) to the queue's dead-letter list (seeds 000, 001)",
               queues.move_to_dead_letter),
    Mitigation("block_address", Risk.RISKY,
               "Block a source address in the Redis blocklist until an expiry (seed 000)",
               queues.block_address),
    Mitigation("set_flag", Risk.RISKY,
               "Switch a configured feature flag or maintenance mode in Redis (seeds 000, 003)",
               queues.set_flag),
    Mitigation("trigger_job", Risk.SAFE,
               "Trigger a configured HTTP job, e.g. a manual product sync (seed 003)",
               jobs.trigger_job),
)

__all__ = ["ACTIONS", "commands", "files", "postgres", "redis"]
