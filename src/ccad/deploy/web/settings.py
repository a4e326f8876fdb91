"""``ccad serve``'s settings: one typed class, its flags derived from it (:mod:`ccad.options`), checked at start
rather than on the first request."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from pathlib import Path

from ccad.deploy.live_metrics import (
    check_drift_window,
    drift_window_option,
    result_log_option,
    validated_of,
    validated_option,
)
from ccad.errors import ConfigError
from ccad.io.files import atomic_path, private_path
from ccad.options import option


@dataclass
class ServeSettings:
    """Everything ``ccad serve`` is given but the address: the fields with a help text are its flags."""

    bundle: Path
    _: KW_ONLY
    api_key: str | None = None  # --api-key, or CCAD_API_KEY (read by the CLI)
    variant: str = "float"  # --int8
    max_upload_bytes: int = option(20 * 2**20, "largest file", flag="--max-upload-mb", unit=2**20)
    max_request_bytes: int = option(40 * 2**20, "largest request (all its files)", flag="--max-request-mb", unit=2**20)
    max_pixels: int = 50_000_000
    max_request_pixels: int = 100_000_000
    workers: int = option(2, "decoding threads (and ONNX Runtime threads)")
    queue: int = option(32, "requests allowed to wait before 503")
    timeout_s: float = 30.0
    body_timeout_s: float = 30.0
    header_timeout_s: float = option(
        10.0,
        "close a connection that has not sent a request's headers within this many seconds",
        flag="--header-timeout",
    )
    keep_uploads: Path | None = option(
        None,
        "store each upload's decoded pixels here (16-bit PNG, no header, mode 0600); default: never",
        metavar="DIR",
    )
    #: Micro-batching: images of concurrent requests wait up to this long to be scored together.
    batch_wait_ms: float = option(
        5.0, "how long an image waits for others to be scored with it (micro-batching; 0: no waiting)"
    )
    max_batch: int = option(16, "most images in one model call")
    docs: bool = option(False, "serve /docs (Swagger UI loads its scripts from a CDN)")
    verify_key: Path | None = option(
        None, "refuse a bundle not signed by this key's owner (PEM)", flag="--verify", metavar="PUBLIC_KEY"
    )
    #: ``GET /metrics`` (Prometheus text format, behind the API key when one is set) and the drift window.
    metrics: bool = option(True, "do not serve /metrics", flag="--no-metrics")
    drift_window: int = drift_window_option()
    #: Append one JSON line an image scored (:class:`ccad.deploy.live_metrics.ResultLog`).
    result_log: Path | None = result_log_option()
    #: The readers' verdicts (``POST /api/v1/verdicts``), one JSON line each: the result's pseudonym, the verdict,
    #: the outcome; no patient field.
    verdict_log: Path | None = option(
        None, "append each reader's verdict (POST /api/v1/verdicts) here, one JSON line", metavar="FILE"
    )
    validated_sensitivity: float | None = validated_option("sensitivity")
    validated_specificity: float | None = validated_option("specificity")

    def check(self) -> "ServeSettings":
        """Refuse settings that cannot work, at start rather than on the first request."""
        if self.workers < 1:
            raise ConfigError(f"`workers` must be at least 1, got {self.workers}")
        if self.queue < 0:
            raise ConfigError(f"`queue` must be 0 or more, got {self.queue}")
        if self.batch_wait_ms < 0 or self.max_batch < 1:
            raise ConfigError("`batch_wait_ms` must be 0 or more and `max_batch` at least 1")
        check_drift_window(self.drift_window)
        validated_of(self)
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
