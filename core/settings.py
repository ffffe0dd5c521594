"""Settings by subsystem, from the environment, with defaults that run on a laptop.

Every variable has the ``RESPONDER_`` prefix. Prefect's own settings
(``PREFECT_API_URL``, ``PREFECT_SERVER_API_PORT``, ``PREFECT_HOME``) are read by
Prefect itself; the responder only decides whether to start an embedded server.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ResponderSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RESPONDER_", extra="ignore")

    home: Path = Field(
        default=PROJECT_ROOT / ".responder",
        description="Directory for the responder's own state (SQLite store, generated token).",
    )
    config_dir: Path = Field(default=PROJECT_ROOT / "config")
    database_url: SecretStr | None = Field(
        default=None,
        description="postgresql://… for PostgreSQL; default: SQLite file under `home`.",
    )
    intake_host: str = "127.0.0.1"
    intake_port: int = Field(default=8765, ge=1, le=65535)
    intake_token: SecretStr | None = Field(
        default=None,
        description="Bearer token Alertmanager must send. Generated into HOME/intake-token when unset.",
    )
    intake_max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    intake_public_url: str | None = None
    poll_seconds: float = Field(
        default=2.0,
        gt=0,
        description="Fallback poll for scheduled runs; new runs are normally seen at once through the event stream.",
    )
    max_concurrent_runs: int = Field(default=64, ge=1)
    lease_seconds: float = Field(
        default=30.0, ge=3,
        description="How long a responder's hold on a run lasts without renewal (it renews every third of it): "
                    "the runs of a responder that stopped are taken over by another this long after.",
    )
    delivery_retry_seconds: float = Field(default=1.0, gt=0)
    response_start_grace_seconds: float = Field(
        default=180.0, gt=0,
        description="An open incident that no run has claimed this long after it opened, its opening event "
                    "delivered, gets that event sent to Prefect again (the server's in-memory messaging drops "
                    "events when a consumer falls 10,000 behind): at most 3 times, this far apart.")
    dry_run: bool = Field(default=False, description="Every mitigation only reports what it would do.")
    slack_token: SecretStr | None = Field(default=None, description="Bot token (xoxb-…); Slack is off without it.")
    slack_api_url: str = Field(default="https://slack.com/api/", description="Slack Web API base URL.")
    slack_signing_secret: SecretStr | None = Field(
        default=None, description="Verifies Slack interactivity requests (buttons); buttons are refused without it."
    )
    user_token: SecretStr | None = Field(
        default=None,
        description="Your personal token (`responder tokens add NAME`): `responder approve|reject` answer through "
                    "the intake with it, verified under your name. Without it they answer as 'not verified'.",
    )
    pagerduty_webhook_secret: SecretStr | None = Field(
        default=None,
        description="Signing secret of a PagerDuty V3 webhook subscription; POST /pagerduty is refused without it.",
    )
    @field_validator("database_url", "intake_token", "slack_token", "slack_signing_secret", "user_token",
                     "pagerduty_webhook_secret", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """``VAR=`` (as docker-compose's ``${VAR:-}`` passes an unset variable) means unset: an empty signing
        secret would otherwise verify signatures anyone can compute."""
        return None if isinstance(value, str) and not value.strip() else value

    embedded_server: Literal["tuned", "stock", "split"] = Field(
        default="tuned",
        description=(
            "How `responder up` runs the embedded Prefect server: `tuned` (the stock app with SQLite "
            "writes queued; see responder/prefect_server.py), `split` (the same, with Prefect's services "
            "in a second process; needs Prefect's messaging on Redis) or `stock` (`prefect server start`)."
        ),
    )
    watchdog_alertname: str = Field(
        default="Watchdog",
        description="Alertmanager's always-firing alert (the dead man's switch); its arrivals arm the switch.",
    )
    watchdog_interval_seconds: float = Field(
        default=60.0, gt=0,
        description="How often Alertmanager re-sends the Watchdog (the shipped route: every 60 s). Silent for "
                    "twice this, the responder starts the AlertmanagerNotSending runbook by itself and pages.",
    )
    time_scale: float = Field(
        default=1.0,
        gt=0,
        description="Factor on every escalation and approval delay (tests use 0.01).",
    )

    @field_validator("home", "config_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def sqlite_path(self) -> Path:
        return self.home / "responder.db"

    @property
    def intake_url(self) -> str:
        if self.intake_public_url:
            return self.intake_public_url.rstrip("/")
        host = "127.0.0.1" if self.intake_host in ("0.0.0.0", "::") else self.intake_host
        return f"http://{host}:{self.intake_port}"

    def token(self) -> SecretStr:
        """The intake token: from the environment, else from HOME/intake-token (created 0600 once)."""
        if self.intake_token is not None and self.intake_token.get_secret_value():
            return self.intake_token
        path = self.home / "intake-token"
        if not path.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32))
        return SecretStr(path.read_text().strip())
