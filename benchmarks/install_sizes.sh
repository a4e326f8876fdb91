#!/usr/bin/env bash
# Size on disk and install time of each install role, each in a fresh virtualenv, plus `ccad --help`'s
# start-up time in the plain one. Prints JSON. Run from the repository root:
#   bash benchmarks/install_sizes.sh > benchmarks/results/install_sizes.json
set -euo pipefail
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/empty"
empty=$(du -sm "$work/empty" | cut -f1)
echo "{"
echo "  \"benchmark\": \"install_sizes\", \"empty_venv_mb\": $empty,"
first=1
for role in "" "[scale]" "[train]"; do
  name="plain${role}"
  python3 -m venv "$work/$name"
  start=$(date +%s)
  "$work/$name/bin/pip" install --quiet --disable-pip-version-check ".$role" >"$work/$name.log" 2>&1 \
    || { cat "$work/$name.log" >&2; exit 1; }
  seconds=$(( $(date +%s) - start ))
  size=$(du -sm "$work/$name" | cut -f1)
  numpy=$("$work/$name/bin/python" -c "import numpy; print(numpy.__version__)")
  [ $first -eq 1 ] || echo ","
  first=0
  printf '  "%s": {"seconds": %s, "venv_mb": %s, "numpy": "%s"' "pip install .$role" "$seconds" "$size" "$numpy"
  if [ -z "$role" ]; then
    help=$( { /usr/bin/time -f "%e" "$work/$name/bin/ccad" --help >/dev/null; } 2>&1 )
    printf ', "ccad_help_s": %s' "$help"
  fi
  printf '}'
  rm -rf "$work/$name"
done
echo
echo "}"
