"""``ccad serve``'s settings: one typed class, checked at start rather than on the first request."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ccad.errors import ConfigError
from ccad.io.files import atomic_path, private_path


@dataclass
class ServeSettings:
    bundle: Path
    api_key: str | None = None
    variant: str = "float"
    max_upload_bytes: int = 20 * 1024 * 1024
    max_request_bytes: int = 40 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_request_pixels: int = 100_000_000
    workers: int = 2
    queue: int = 32
    timeout_s: float = 30.0
    body_timeout_s: float = 30.0
    header_timeout_s: float = 10.0
    keep_uploads: Path | None = None
    #: Micro-batching: images of concurrent requests wait up to this long to be scored together.
    batch_wait_ms: float = 5.0
    max_batch: int = 16
    docs: bool = False
    verify_key: Path | None = None
    #: ``GET /metrics`` (Prometheus text format, behind the API key when one is set) and the drift window.
    metrics: bool = True
    drift_window: int = 200
    #: Append one JSON line an image scored (:class:`ccad.deploy.monitoring.ResultLog`).
    result_log: Path | None = None

    def check(self) -> "ServeSettings":
        """Refuse settings that cannot work, at start rather than on the first request."""
        if self.workers < 1:
            raise ConfigError(f"`workers` must be at least 1, got {self.workers}")
        if self.queue < 0:
            raise ConfigError(f"`queue` must be 0 or more, got {self.queue}")
        if self.batch_wait_ms < 0 or self.max_batch < 1:
            raise ConfigError("`batch_wait_ms` must be 0 or more and `max_batch` at least 1")
        if self.drift_window < 20:
            raise ConfigError(f"`drift_window` must be at least 20 images, got {self.drift_window}")
        if self.max_upload_bytes < 1 or self.max_request_bytes < self.max_upload_bytes:
            raise ConfigError("`max_upload_bytes` must be positive and at most the request limit")
        if self.keep_uploads is not None:
            folder = private_path(self.keep_uploads, "`keep_uploads`", folder=True)  # 0700, even one that existed
            try:
                with atomic_path(folder / ".ccad-write-test") as tmp:
                    tmp.write_bytes(b"")
            except OSError as e:
                raise ConfigError(f"`keep_uploads` {folder}: cannot write there ({e.strerror})") from None
            (folder / ".ccad-write-test").unlink(missing_ok=True)
        return self
