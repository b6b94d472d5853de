# The README's two commands: `make demo` (set up, then run the main job) and `make test`.
PY := .venv/bin/python

.PHONY: setup demo test addon bench
setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m backend demo --out out/demo

test: setup
	$(PY) -m pytest

addon: setup
	$(PY) build_addon.py
