"""Root test configuration: real PostgreSQL and Redis, never SQLite."""

from __future__ import annotations

import os

# Tests get their own Redis key prefixes so a running dev stack is untouched.
os.environ.setdefault("CACHE_KEY_PREFIX", "fp-test")
os.environ.setdefault("CHANNELS_PREFIX", "fp-test-asgi")
