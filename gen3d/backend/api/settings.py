"""Server settings: where data lives, the optional token, and the limits applied to every request."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    """Everything ``create_app`` needs. Sizes in bytes, pixels as width * height."""

    data_dir: Path
    #: when set, every route but ``/v1/health`` needs ``Authorization: Bearer TOKEN`` or ``X-Gen3D-Token``
    token: str | None = None
    weights_dir: Path | None = None
    #: ``auto`` (cuda > mps > cpu) or a torch device string, used by the worker process
    device: str = "auto"
    #: whole multipart body of ``POST /v1/jobs``
    max_upload_bytes: int = 1 << 30
    #: one image (upload or inside the views zip); rejects decompression bombs before decoding
    max_image_pixels: int = 8192 * 8192
    #: the views zip: number of members and total uncompressed size
    max_views_files: int = 4096
    max_views_bytes: int = 4 << 30
    #: a running job that ignores cancellation this long has its worker stopped
    cancel_grace_s: float = 10.0

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "jobs.sqlite3"
