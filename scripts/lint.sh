#!/usr/bin/env bash
# Static checks CI runs: ruff, the import-linter layer contracts, Django's checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
# Static checks connect to nothing: without DATABASE_URL / REDIS_URL the
# settings would start the embedded servers, so give them addresses no one uses.
export DATABASE_URL="${DATABASE_URL:-postgres://lint@127.0.0.1:1/lint}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:1/0}"
echo "== ruff"; .venv/bin/ruff check .
echo "== import-linter"; .venv/bin/lint-imports
echo "== django check"; $PY manage.py check --fail-level WARNING
if [ -f scripts/check_no_bulk_history.py ]; then echo "== no bulk writes on versioned models"; $PY scripts/check_no_bulk_history.py; fi
