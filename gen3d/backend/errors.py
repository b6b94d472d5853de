"""The one error hierarchy of the backend.

Every error has a stable ``code``, a one-line ``message`` and a ``detail`` dict. The HTTP API and the CLI
translate them in one place each (``api/app.py``, ``__main__.py``); library code raises, never prints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class Gen3DError(Exception):
    """Base class. ``http_status`` and ``exit_code`` say how the API and the CLI report it."""

    code = "internal"
    http_status = 500
    exit_code = 1

    def __init__(self, message: str, detail: dict[str, Any] | None = None, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.detail = dict(detail or {})
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "detail": self.detail}

    def naming(self, paths: dict[str | Path, str]) -> "Gen3DError":
        """A copy that says ``name`` wherever its message or detail says ``path`` (longest paths first; ``path``
        and ``file`` detail keys dropped): for errors shown to someone who did not choose those paths, such as an
        upload's server path, named by its input field."""
        texts = {}
        for path, name in paths.items():
            for text in {str(path), str(Path(path).resolve()) if Path(path).is_absolute() else str(path)}:
                if len(text) > 1:
                    texts.setdefault(text, name)
        message = self.message
        detail = json.dumps({k: v for k, v in self.detail.items() if k not in ("path", "file")}, default=str)
        for text in sorted(texts, key=len, reverse=True):
            message = message.replace(text, texts[text])
            detail = detail.replace(json.dumps(text)[1:-1], texts[text])
        return type(self)(message, json.loads(detail), code=self.code)


class BadInput(Gen3DError):
    """The request, a file or an option is wrong. HTTP 422 (400 for unparsable bodies), CLI exit 2."""

    code = "bad_input"
    http_status = 422
    exit_code = 2


class NotFound(Gen3DError):
    code = "not_found"
    http_status = 404
    exit_code = 2


class Conflict(Gen3DError):
    """The thing exists but is in the wrong state for the request (deleting a running job, ...)."""

    code = "conflict"
    http_status = 409
    exit_code = 2


class TooLarge(Gen3DError):
    code = "too_large"
    http_status = 413
    exit_code = 2


class Unauthorized(Gen3DError):
    code = "unauthorized"
    http_status = 401
    exit_code = 2


class MissingWeights(Gen3DError):
    """A pretrained checkpoint is not on disk; ``detail['command']`` is the command that downloads it."""

    code = "missing_weights"
    http_status = 503
    exit_code = 3


class DownloadFailed(Gen3DError):
    """Fetching weights failed (no network, the hub refused, the repository is gated); CLI exit 2."""

    code = "download_failed"
    http_status = 502
    exit_code = 2


class Cancelled(Gen3DError):
    code = "cancelled"
    http_status = 409
    exit_code = 130


class NumericalError(Gen3DError):
    """An optimisation diverged (NaN/inf); nothing is written."""

    code = "numerical_error"
    http_status = 500
    exit_code = 1


class InternalError(Gen3DError):
    code = "internal"
    http_status = 500
    exit_code = 1
