#!/usr/bin/env bash
# The whole suite against real PostgreSQL and Redis: DATABASE_URL / REDIS_URL
# when set, else embedded ones started under var/ (trading.embedded).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
if [ -z "${DATABASE_URL:-}" ] || [ -z "${REDIS_URL:-}" ]; then
  echo "== starting embedded services (no DATABASE_URL/REDIS_URL)"
  eval "$($PY -m trading.runtime services)"
  export DATABASE_URL REDIS_URL
fi
echo "database: ${DATABASE_URL}"
echo "redis:    ${REDIS_URL}"
if [ -x /usr/bin/chromium ]; then export CHROMIUM_PATH=/usr/bin/chromium; fi

bash scripts/lint.sh

ARGS=(-q -p no:cacheprovider)
if [ "${1:-}" = "--fast" ]; then
  ARGS+=(-m "not integration and not e2e")
fi
rm -f .coverage .coverage.*
$PY -m pytest "${ARGS[@]}" --cov --cov-report=term:skip-covered --cov-fail-under="${COVERAGE_FLOOR:-80}"
