#!/usr/bin/env bash
# Installs the `standardwebhooks` package (PyPI, pinned) into its own venv and
# prints the venv's path; the webhook interop tests verify our signatures with it.
# Idempotent. Venv: ASAP_STANDARDWEBHOOKS_VENV, default ~/.cache/asap-interop/standardwebhooks.
set -euo pipefail
VENV=${ASAP_STANDARDWEBHOOKS_VENV:-$HOME/.cache/asap-interop/standardwebhooks}
STAMP="$VENV/.standardwebhooks-1.1.0"
if [ -f "$STAMP" ]; then echo "$VENV"; exit 0; fi
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq python3-venv) >&2
fi
rm -rf "$VENV"
python3 -m venv "$VENV" >&2
"$VENV/bin/pip" install -q "standardwebhooks==1.1.0" >&2
"$VENV/bin/python" -c 'from standardwebhooks.webhooks import Webhook' >&2
touch "$STAMP"
echo "$VENV"
