#!/usr/bin/env bash
# Copies the shared kit's golden vectors and architecture page into the repository
# (tests/vectors/, docs/ARCHITECTURE.md), then shows what changed. See CONTRIBUTING.md.
#
#   scripts/sync-shared.sh SHARED_DIR      # e.g. scripts/sync-shared.sh ../shared
#
# The copies are exact (files the kit no longer has are removed); review the diff,
# run `cargo test --workspace`, and commit them together with any code they need.
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: $0 SHARED_DIR   (the shared kit: vectors/, design/ARCHITECTURE.md)" >&2
  exit 2
fi
SHARED=$(cd "$1" && pwd)
[ -f "$SHARED/vectors/INDEX.json" ] || { echo "$SHARED/vectors/INDEX.json not found: is $1 the shared kit?" >&2; exit 1; }
[ -f "$SHARED/design/ARCHITECTURE.md" ] || { echo "$SHARED/design/ARCHITECTURE.md not found" >&2; exit 1; }
cd "$(dirname "$0")/.."
rm -rf tests/vectors
cp -R "$SHARED/vectors" tests/vectors
cp "$SHARED/design/ARCHITECTURE.md" docs/ARCHITECTURE.md
echo "synced from $SHARED:"
git status --short --untracked-files=all -- tests/vectors docs/ARCHITECTURE.md
git diff --stat -- tests/vectors docs/ARCHITECTURE.md
