#!/usr/bin/env bash
# Refresh the pinned installs (requirements/*.txt) from pyproject.toml with uv (pip install uv):
#   bash requirements/lock.sh            # keep the current pins where they still satisfy pyproject.toml
#   bash requirements/lock.sh --upgrade  # move every pin to the newest allowed release
# One lock per install role, for CPython 3.11 on Linux x86_64 (what CI runs), with every file's hash:
# pip then installs in hash-checking mode. Other platforms install from pyproject.toml's ranges.
set -euo pipefail
cd "$(dirname "$0")/.."
for role in base train scale jpeg12 dev; do
  extra=(); [ "$role" != base ] && extra=(--extra "$role")
  uv pip compile pyproject.toml "${extra[@]}" --generate-hashes --python-version 3.11 \
    --python-platform x86_64-manylinux_2_28 --constraint requirements/constraints.txt --no-header --quiet "$@" -o "requirements/$role.txt"
  sed -i "1i # ccad's pinned '$role' install, made by requirements/lock.sh from pyproject.toml (uv pip compile)." \
    "requirements/$role.txt"
done
