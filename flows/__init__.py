"""Runbook flows: one module per seed runbook, composed from ``tasks`` and ``flows.lifecycle``."""
