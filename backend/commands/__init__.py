"""CLI commands, one module each (see ``backend/__main__.py``)."""
