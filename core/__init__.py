"""What the runbooks and the service share: alerts, the catalog, settings, the store, the notifier, metrics.

Dependencies point one way: ``tasks`` (probes and actions) ← ``core`` ← ``flows`` (runbooks and the
lifecycle) ← ``deployments`` ← ``responder`` (intake, executor, event delivery, follow-ups, CLI).
``core`` imports nothing from ``flows``, ``deployments`` or ``responder``; ``responder up`` builds
one :class:`core.services.Services` and hands it to every run.
"""
