"""Probes and mitigations: the steps runbook flows are made of (see ``tasks/base.py``)."""
