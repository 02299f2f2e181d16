#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv on first use, installs sluice into it,
# then runs `sluice ARGS...` ("./sluice.sh test" runs the test suite).
set -euo pipefail
cd "$(dirname "$0")"
venv=.venv
stamp="$venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q -e '.[dev]'
    rm -f "$venv"/.installed-* && touch "$stamp"
fi
if [ "${1:-}" = "test" ]; then
    shift
    "$venv/bin/lint-imports" --config pyproject.toml
    "$venv/bin/mypy"  # strict on controlplane/core and fairness ([tool.mypy] in pyproject.toml)
    "$venv/bin/ruff" check --quiet .  # [tool.ruff] in pyproject.toml
    exec "$venv/bin/python" -m pytest "$@"
fi
exec "$venv/bin/sluice" "$@"
