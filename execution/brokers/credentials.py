"""Broker credentials: read here and nowhere else, and only by the live adapter.

Sources, first match wins:

1. ``FP_BROKER_CREDENTIALS_FILE``: a file holding JSON
   ``{"api_key": "...", "api_secret": "..."}`` (e.g. a Docker secret);
2. ``FP_BROKER_API_KEY`` and ``FP_BROKER_API_SECRET``.

Only the execute worker's environment holds these variables: the runtime
(``trading.runtime.split_broker_env``) strips every ``FP_BROKER_*`` variable
from the other processes. The values are never logged, never stored in the
database, and ``repr`` of the result hides them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path


class CredentialsMissing(Exception):
    """The live adapter was asked for but this process has no broker credentials."""


@dataclass(frozen=True)
class BrokerCredentials:
    api_key: str = field(repr=False)
    api_secret: str = field(repr=False)

    def __repr__(self) -> str:
        return f"BrokerCredentials(api_key=***{self.api_key[-4:] if len(self.api_key) > 8 else ''})"


def broker_credentials(environ: dict[str, str] | None = None) -> BrokerCredentials:
    env = os.environ if environ is None else environ
    path = env.get("FP_BROKER_CREDENTIALS_FILE", "")
    if path:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise CredentialsMissing(f"FP_BROKER_CREDENTIALS_FILE={path!r} cannot be read as JSON: {exc}") from exc
        key, secret = str(data.get("api_key", "")), str(data.get("api_secret", ""))
    else:
        key, secret = env.get("FP_BROKER_API_KEY", ""), env.get("FP_BROKER_API_SECRET", "")
    if not key or not secret:
        raise CredentialsMissing(
            "no broker credentials in this process: set FP_BROKER_API_KEY and FP_BROKER_API_SECRET "
            "(or FP_BROKER_CREDENTIALS_FILE) in the execute worker's environment only"
        )
    return BrokerCredentials(api_key=key, api_secret=secret)
