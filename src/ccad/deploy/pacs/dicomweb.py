"""DICOMweb for the listener and ``ccad dicom pull`` (dicomweb-client): STOW-RS out, QIDO-RS and WADO-RS in.

    --send-to dicomweb+https://pacs.example.org/dicom-web     # results stored with STOW-RS
    ccad dicom pull --from https://pacs.example.org/dicom-web --since 2026-12-01 --send-to ...

Credentials come from the environment or a file, never from the command line (where ``ps`` and shell
histories would show them): ``CCAD_DICOMWEB_TOKEN`` (a bearer token), or ``CCAD_DICOMWEB_USER`` and
``CCAD_DICOMWEB_PASSWORD`` (HTTP basic), or ``--dicomweb-auth FILE`` holding ``bearer TOKEN`` or
``USER:PASSWORD`` on its first line. TLS certificates are verified (``--ca-file`` for a site's own
certificate authority); there is no switch to turn that off.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ccad.errors import ConfigError

PREFIX = "dicomweb+"
#: What ``ccad dicom pull`` asks QIDO-RS for: the modalities the listener scores.
PULL_MODALITIES = ("CR", "DX")
PAGE = 100
log = logging.getLogger("ccad.dicom")


LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def check_url(url: str, text: str | None = None) -> str:
    """``url`` when it is https, or http to this machine (credentials and patient data never cross a network in
    clear); with no credentials in it."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    what = text or url
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{what!r}: expected an https://HOST/PATH URL (dicomweb+https://... for `send_to`)")
    if parts.username or parts.password:
        raise ConfigError(f"{what!r}: no credentials in the URL (they come from the environment or a file)")
    if parts.scheme == "http" and parts.hostname not in LOOPBACK:
        raise ConfigError(f"{what!r}: plain http is refused except to this machine (127.0.0.1): use https")
    return url


@dataclass(frozen=True)
class WebDestination:
    """A DICOMweb service's base URL (``dicomweb+https://host/dicom-web`` on the command line)."""

    url: str

    @classmethod
    def parse(cls, text: str) -> "WebDestination":
        url = text[len(PREFIX) :] if text.startswith(PREFIX) else text
        check_url(url, text)
        return cls(url.rstrip("/"))

    @property
    def ae_title(self) -> str:  # how logs name it
        return "DICOMweb"


def session(
    auth_file: str | os.PathLike | None = None, ca_file: str | os.PathLike | None = None, env: str = "CCAD_DICOMWEB"
):
    """A requests session with the credentials of ``auth_file`` or the environment (``{env}_TOKEN``, or
    ``{env}_USER`` and ``{env}_PASSWORD``) and TLS verification."""
    import requests

    s = requests.Session()
    s.verify = str(ca_file) if ca_file else True
    token, user, password = (os.environ.get(f"{env}_{k}") for k in ("TOKEN", "USER", "PASSWORD"))
    if auth_file:
        try:
            line = Path(auth_file).read_text().strip().splitlines()[0].strip()
        except (OSError, IndexError):
            raise ConfigError(f"`dicomweb_auth` {auth_file}: cannot read a first line from it") from None
        if line.lower().startswith("bearer "):
            token = line[7:].strip()
        elif ":" in line:
            user, password = line.split(":", 1)
        else:
            raise ConfigError(f"`dicomweb_auth` {auth_file}: expected 'bearer TOKEN' or 'USER:PASSWORD'")
    if token:
        s.headers["Authorization"] = f"Bearer {token}"
    elif user:
        s.auth = (user, password or "")
    return s


def client(url: str, http, timeout_s: float = 30.0):
    """A dicomweb-client for ``url`` over ``http`` (a :func:`session`)."""
    from dicomweb_client.api import DICOMwebClient

    return DICOMwebClient(check_url(url), session=http, timeout=timeout_s)


def stow(web, dataset) -> str | None:
    """Store one data set with STOW-RS; None when stored, else why not (in words, no value of the data set)."""
    import requests

    try:
        response = web.store_instances([dataset])
    except requests.exceptions.HTTPError as e:
        return f"HTTP {e.response.status_code if e.response is not None else '?'}"
    except (requests.exceptions.RequestException, OSError) as e:
        return type(e).__name__
    failed = response.get("FailedSOPSequence") if response is not None else None
    return "the destination refused it (FailedSOPSequence)" if failed else None


def find_instances(web, study: str | None = None, since: str | None = None) -> Iterator[tuple[str, str, str]]:
    """(study, series, instance) UIDs of the CR and DX instances of ``study``, or of the studies dated
    ``since`` (YYYYMMDD) or later, page by page (QIDO-RS)."""
    seen: set[str] = set()
    for modality in PULL_MODALITIES:
        filters = {"Modality": modality}
        if since:
            filters["StudyDate"] = f"{since}-"
        offset = 0
        while True:
            page = web.search_for_instances(
                study_instance_uid=study,
                search_filters=filters,
                limit=PAGE,
                offset=offset,
                fields=["StudyInstanceUID", "SeriesInstanceUID"],
            )
            new = 0
            for item in page:
                uids = tuple(
                    str(item.get(tag, {}).get("Value", [""])[0] or "") for tag in ("0020000D", "0020000E", "00080018")
                )
                if all(uids) and uids[2] not in seen:
                    seen.add(uids[2])
                    new += 1
                    yield uids
            if len(page) < PAGE or not new:  # the last page, or a server that ignores the offset
                break
            offset += len(page)


class TooLarge(Exception):
    """A WADO-RS response past the size the listener would accept."""


def fetch_instance(
    http, base: str, study: str, series: str, instance: str, max_bytes: int, timeout_s: float = 60.0
) -> bytes:
    """The DICOM file of one instance (WADO-RS), read as it arrives and abandoned past ``max_bytes``
    (:class:`TooLarge`): a hostile archive cannot make one fetch fill the memory. ``http`` is a
    :func:`session`."""
    url = f"{base}/studies/{study}/series/{series}/instances/{instance}"
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    with http.get(url, headers={"Accept": accept}, stream=True, timeout=timeout_s) as response:
        response.raise_for_status()
        chunks, seen = [], 0
        for chunk in response.iter_content(chunk_size=1 << 16):
            seen += len(chunk)
            if seen > max_bytes + 64 * 1024:  # the multipart framing around the file is small
                raise TooLarge(f"over {max_bytes // 2**20} MB")
            chunks.append(chunk)
        body, kind = b"".join(chunks), response.headers.get("Content-Type", "")
    return _first_part(body, kind)


def _first_part(body: bytes, content_type: str) -> bytes:
    """The first part's bytes of a multipart/related body (the whole body when it is not multipart)."""
    from email.message import Message

    if not content_type.lower().startswith("multipart/"):
        return body
    header = Message()
    header["Content-Type"] = content_type
    boundary = header.get_param("boundary")
    if not boundary:
        raise ValueError("a multipart answer without a boundary")
    delimiter = b"--" + str(boundary).encode()
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):  # the closing delimiter
            break
        head, sep, data = part.partition(b"\r\n\r\n")
        if sep:
            return data[:-2] if data.endswith(b"\r\n") else data
    raise ValueError("a multipart answer without a part")
