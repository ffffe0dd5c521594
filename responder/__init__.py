"""runbook-responder: Prometheus Alertmanager alerts → Prefect runbook flows.

The package holds what is not a flow or a task: settings, the alert intake,
the durable store, delivery of alerts to Prefect as events, the in-process
executor for runbook deployments, and the ``responder`` CLI.
"""
