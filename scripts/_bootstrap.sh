# Shared by scripts/demo and scripts/test: a local virtual environment from the lock file,
# and a check of the services. Sourced, not run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# uv on PATH, installed with pip when missing. Its directory goes on PATH, not just into $UV:
# the tests run uv too (tests/test_light_install.py), from inside .venv where `python3 -m uv`
# would not find a copy that pip put beside the system Python (or in ~/.local/bin).
ensure_uv() {
  if ! command -v uv >/dev/null 2>&1; then
    if ! python3 -m uv --version >/dev/null 2>&1; then
      echo "==> installing uv (the package manager that reads uv.lock) with pip" >&2
      python3 -m pip install --quiet --user uv 2>/dev/null || python3 -m pip install --quiet uv
    fi
    local bin
    bin="$(python3 -c 'import os, uv; print(os.path.dirname(uv.find_uv_bin()))')"
    export PATH="$bin:$PATH"
  fi
  UV=(uv)
}

ensure_venv() {
  ensure_uv
  echo "==> syncing .venv from uv.lock" >&2
  "${UV[@]}" sync --frozen --quiet "$@"
  export PATH="$ROOT/.venv/bin:$PATH"
}

# check_redis URL: fail with the command that starts it
check_redis() {
  local url="$1"
  if ! python - "$url" <<'PY'
import sys, redis
try:
    redis.Redis.from_url(sys.argv[1], socket_connect_timeout=2).ping()
except redis.RedisError as exc:
    print(f"Redis is not reachable at {sys.argv[1]}: {exc}", file=sys.stderr)
    sys.exit(1)
PY
  then
    echo "Start it with: redis-server --daemonize yes --save '' --appendonly no" >&2
    return 1
  fi
}

# check_postgres URL
check_postgres() {
  local url="$1"
  if ! python - "$url" <<'PY'
import sys, psycopg
try:
    psycopg.connect(sys.argv[1], connect_timeout=3).close()
except psycopg.Error as exc:
    print(f"Postgres is not reachable at {sys.argv[1]}: {str(exc).strip()}", file=sys.stderr)
    sys.exit(1)
PY
  then
    echo "Start it (Debian: pg_ctlcluster <version> main start) or set the URL variable." >&2
    return 1
  fi
}
