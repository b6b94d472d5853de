"""The local service: FastAPI app (``app.py``), job store (``store.py``), worker process (``worker.py``),
scheduler (``scheduler.py``), server-sent events (``events.py``) and upload checks (``uploads.py``)."""
