"""Test support shared by several test modules (no test module imports another).

``conftest.py`` keeps only the pytest fixtures (Prefect server, PostgreSQL, Redis, capture servers)
and hooks; every helper lives here, grouped by what it touches:

* :mod:`support.common`: ``ROOT``, ``BIN``, ``free_port``, ``wait_for``;
* :mod:`support.alerts`: Alertmanager v4 bodies (``alert_body``, ``load_fixture``);
* :mod:`support.databases`: PostgreSQL (``temporary_database``);
* :mod:`support.capture`: ``CaptureServer``, the stand-in for unreachable webhooks;
* :mod:`support.prefect`: a Prefect server process and Prefect's REST API (runs, events, approval, report);
* :mod:`support.responder`: the ``responder up`` process and its config/ copy (``make_config``, ``fire``);
* :mod:`support.prometheus`, :mod:`support.queues`: the heavier stand-ins and servers.

Test modules import them as ``from support.<module> import ...`` (``tests/`` is on ``sys.path``
because pytest puts a rootdir conftest's directory there); inside the package, imports are relative.
"""
