#!/usr/bin/env bash
# One virtual environment per ComfyUI host of the supported range, each with that host's own
# requirements (their pins differ), plus the newest frontend on the registry for the browser tests.
#
#   bash scripts/setup_hosts.sh            # both hosts found in ../shared/ (or the ones named below)
#   HOSTS="/path/to/ComfyUI" bash scripts/setup_hosts.sh
#
# For each host folder H it makes .venv/comfyui-<version>/ (version from H/comfyui_version.py) with
# --system-site-packages, so torch and torchvision come from the interpreter that runs this script
# (installed here from the machine's local wheels) and are not copied twice. Into the venv go the
# host's requirements (minus torch, torchvision, torchaudio), torchaudio without its dependencies
# (0.33.0 imports it at start-up) and this pack's test extra. Prints "VERSION VENV-PYTHON HOST" per host.
# The newest frontend (FRONTEND_VERSION) goes to .venv/frontends/<version>/; its static folder is what
# `main.py --front-end-root` takes. Idempotent: a venv whose inputs did not change is kept as it is.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
FRONTEND_VERSION="${FRONTEND_VERSION:-1.58.1}"
TORCHAUDIO="${TORCHAUDIO:-torchaudio==2.11.1}"  # imports with torch 2.14.1; the pack never uses audio
PIP=(-m pip install -q --disable-pip-version-check)

if [ -z "${HOSTS:-}" ]; then
  HOSTS=""
  for candidate in "$ROOT/../shared/ComfyUI-0.33.0" "$ROOT/../shared/ComfyUI"; do
    [ -f "$candidate/nodes.py" ] && HOSTS="$HOSTS $(cd "$candidate" && pwd)"
  done
fi
if [ -z "${HOSTS// /}" ]; then
  echo "setup_hosts: no ComfyUI host found (looked in ../shared/); set HOSTS to your ComfyUI folders" >&2
  exit 3
fi

"$PY" "${PIP[@]}" torch==2.14.1 torchvision==0.29.1 >&2

for host in $HOSTS; do
  version="$(sed -n 's/^__version__ *= *"\(.*\)"/\1/p' "$host/comfyui_version.py")"
  venv="$ROOT/.venv/comfyui-$version"
  stamp="$venv/.ledits_stamp"
  want="$(cat "$host/requirements.txt" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "== venv for ComfyUI $version ($host): $venv" >&2
    "$PY" -m venv --system-site-packages "$venv"
    reqs="$(mktemp)"
    grep -vE '^\s*(torch|torchvision|torchaudio)\s*([<>=!~].*)?$' "$host/requirements.txt" > "$reqs"
    "$venv/bin/python" "${PIP[@]}" -r "$reqs" -e "$ROOT[test]" requests websocket-client >&2
    rm -f "$reqs"
    "$venv/bin/python" "${PIP[@]}" --no-deps "$TORCHAUDIO" >&2  # 0.33.0 imports it at start-up
    echo "$want" > "$stamp"
  fi
  echo "$version $venv/bin/python $host"
done

frontend="$ROOT/.venv/frontends/$FRONTEND_VERSION"
if [ ! -d "$frontend/comfyui_frontend_package/static" ]; then
  echo "== frontend $FRONTEND_VERSION: $frontend" >&2
  "$PY" "${PIP[@]}" --target "$frontend" --no-deps "comfyui-frontend-package==$FRONTEND_VERSION" >&2
fi
