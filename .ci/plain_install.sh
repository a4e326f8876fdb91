#!/usr/bin/env bash
# CI: the base install (`pip install .`, no extras) predicts and serves without TensorFlow, and a command
# that needs an extra says which. Run from the repository root after the dev install (it makes the bundle).
set -euo pipefail
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m ccad synth "$work/data" --n-per-class 12 --size 128 >/dev/null
python3 -m ccad train --data "$work/data/manifest.csv" --out "$work/run" --weights none --input-size 64 \
    --epochs 1 --feature-views 0 >/dev/null 2>&1
python3 -m ccad export --model "$work/run" --out "$work/bundle" >/dev/null 2>&1
python3 -m venv "$work/venv"
start=$(date +%s)
"$work/venv/bin/pip" install --quiet --disable-pip-version-check . >"$work/pip.log" 2>&1 \
    || { cat "$work/pip.log"; exit 1; }
echo "plain install: $(( $(date +%s) - start )) s, $(du -sm "$work/venv" | cut -f1) MB"
"$work/venv/bin/python" .ci/plain_install_check.py "$work/bundle" "$work/data"
