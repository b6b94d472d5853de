# The README's two commands: `make demo` (set up, then run the main job) and `make test`.
PY := .venv/bin/python

.PHONY: setup demo test addon lock check-latest
setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m gen3d demo --out out/demo

test: setup
	$(PY) -m pytest

addon: setup
	$(PY) build_addon.py

lock:          # regenerate requirements.lock with pip's resolver (newest releases pyproject.toml allows)
	@bash scripts/lock.sh

check-latest:  # the fast suite on the newest allowed releases, without the lock (drift check)
	@bash scripts/check_latest.sh
