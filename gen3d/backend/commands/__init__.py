"""CLI commands, one module each (see ``gen3d/backend/__main__.py``)."""
