"""Test support shared by several test modules (no test module imports another).

``conftest.py`` keeps the session fixtures (Prefect server, PostgreSQL, Redis) and the helpers
every runbook test uses; the modules here hold the heavier stand-ins and servers.
"""
