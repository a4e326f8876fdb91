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
import math
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
    auth_file: str | os.PathLike | None = None,
    ca_file: str | os.PathLike | None = None,
    env: str = "CCAD_DICOMWEB",
    redirects: bool = True,
):
    """A requests session with the credentials of ``auth_file`` or the environment (``{env}_TOKEN``, or
    ``{env}_USER`` and ``{env}_PASSWORD``) and TLS verification; without ``redirects`` (a destination's),
    a redirect is an error, never followed."""
    import requests

    s = requests.Session()
    s.verify = str(ca_file) if ca_file else True
    if ca_file:
        _keep_verify(s)
    if not redirects:
        # requests would follow a 307 anywhere, re-POSTing a STOW (the patient's name in it) to another host:
        # with none allowed, a redirect is a failure (QIDO and WADO follow theirs in :func:`bounded_get`, only
        # to the archive's own origin); and a destination's answer is read within MAX_ANSWER_BYTES
        s.max_redirects = 0
        s.hooks["response"].append(_bounded_answer)
    token, user, password = (os.environ.get(f"{env}_{k}") for k in ("TOKEN", "USER", "PASSWORD"))
    if auth_file:  # the file's credentials, in place of the environment's
        token = user = password = None
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


def _keep_verify(s) -> None:
    """Have session ``s`` verify with its own ``verify`` (the site's ``ca_file``): requests replaces a session's
    ``verify`` with ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE`` from the environment on every request that gives
    none itself, so wherever those are set (many systems set them) the site's authority would be ignored."""
    merge = s.merge_environment_settings

    def merged(url, proxies, stream, verify, cert):
        settings = merge(url, proxies, stream, verify, cert)
        if verify is None:  # the request gave none: the session's, not the environment's
            settings["verify"] = s.verify
        return settings

    s.merge_environment_settings = merged


#: The most of a destination's answer (a STOW-RS response) that is read: a few KB in practice.
MAX_ANSWER_BYTES = 2**20


class AnswerTooLarge(Exception):
    """A destination's answer over :data:`MAX_ANSWER_BYTES`."""


def _bounded_answer(response, *args, **kwargs):
    """A response hook: read the answer here, within :data:`MAX_ANSWER_BYTES`, before requests would read all
    of it (it reads a non-streamed body after the hooks, unless the body is already there)."""
    body = response.raw.read(MAX_ANSWER_BYTES + 1, decode_content=True)
    if len(body) > MAX_ANSWER_BYTES:
        response.close()
        raise AnswerTooLarge(f"the destination's answer is over {MAX_ANSWER_BYTES // 2**20} MB")
    response._content = body  # requests' own slot for a body already read
    return response


def client(url: str, http, timeout_s: float = 30.0):
    """A dicomweb-client for ``url`` over ``http`` (a :func:`session`)."""
    from dicomweb_client.api import DICOMwebClient

    web = DICOMwebClient(check_url(url), session=http, timeout=timeout_s)
    web.set_http_retry_params(retry=False)  # the spool retries, with its own backoff, without holding the lane
    return web


def stow(web, dataset, timeout_s: float = 120.0) -> str | None:
    """Store one data set with STOW-RS; None when stored, else why not (in words, no value of the data set).
    The whole request has ``timeout_s`` (requests bounds each read only): past it the result is not counted
    as stored and waits in the spool (a late success stores the same object, with the same UIDs, again)."""
    import threading

    box: dict = {}

    def send() -> None:
        try:
            box["why"] = _stow(web, dataset)
        except Exception as e:  # handed to the sender, as if it had called _stow itself
            box["error"] = e

    thread = threading.Thread(target=send, name="ccad-stow", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        return f"the destination did not answer within {timeout_s:g} s"
    if "error" in box:
        raise box["error"]
    return box["why"]


def _stow(web, dataset) -> str | None:
    import requests

    try:
        response = web.store_instances([dataset])
    except AnswerTooLarge as e:
        return str(e)
    except requests.exceptions.TooManyRedirects:
        return "the destination answered with a redirect, which is not followed"
    except requests.exceptions.HTTPError as e:
        return f"HTTP {e.response.status_code if e.response is not None else '?'}"
    except (requests.exceptions.RequestException, OSError) as e:
        return type(e).__name__
    failed = response.get("FailedSOPSequence") if response is not None else None
    return "the destination refused it (FailedSOPSequence)" if failed else None


class ArchiveError(Exception):
    """A misbehaving archive: an answer past its size or its deadline, a redirect off the archive, a QIDO-RS
    answer that is not a JSON list. Its text says which, in words."""


class TooLarge(ArchiveError):
    """A WADO-RS response past the size the listener would accept."""


#: The most one QIDO-RS page may take: a page of :data:`PAGE` instances with two fields is tens of KB.
MAX_QIDO_BYTES = 16 * 2**20
#: Redirects a QIDO-RS or WADO-RS request follows, each to the archive's own scheme, host and port only.
MAX_REDIRECTS = 3
#: The most instances one pull queues (``--max-instances``): an archive that pages for ever stops here.
MAX_INSTANCES = 10_000


def _origin(url: str) -> tuple[str, str, int | None]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


def bounded_get(
    http, url: str, base: str, accept: str, max_bytes: int, deadline: float, params=None
) -> tuple[bytes, str]:
    """(body, content type) of a GET to the archive at ``base``, bounded three ways: the body is read as it
    arrives and abandoned past ``max_bytes`` (:class:`TooLarge`); the whole request, redirects included, is held
    to ``deadline`` (``time.monotonic()``), checked between reads, each read waiting at most the time that was
    left when the request started (so it ends within twice the time it was given, not only each read); a
    redirect is followed only to ``base``'s own origin, and at most :data:`MAX_REDIRECTS` times (the session's
    credentials never go to another host)."""
    import time
    from urllib.parse import urljoin

    for _ in range(MAX_REDIRECTS + 1):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ArchiveError("the archive did not answer within the deadline")
        with http.get(
            url,
            params=params,
            headers={"Accept": accept},
            stream=True,
            timeout=min(remaining, 60.0),
            allow_redirects=False,
        ) as response:
            if response.is_redirect:
                target = urljoin(url, response.headers.get("Location", ""))
                if _origin(target) != _origin(base):
                    raise ArchiveError("the archive redirected to another host, which is not followed")
                url, params = check_url(target), None
                continue
            response.raise_for_status()
            chunks, seen = [], 0
            # read1: what has arrived (iter_content would wait for a whole chunk: a drip would never be timed)
            while chunk := response.raw.read1(1 << 16, decode_content=True):
                seen += len(chunk)
                if seen > max_bytes:
                    raise TooLarge(f"over {max_bytes // 2**20} MB")
                if time.monotonic() > deadline:
                    raise ArchiveError("the archive's answer took longer than the deadline")
                chunks.append(chunk)
            return b"".join(chunks), response.headers.get("Content-Type", "")
    raise ArchiveError(f"the archive redirected more than {MAX_REDIRECTS} times")


def find_instances(
    http,
    base: str,
    study: str | None = None,
    since: str | None = None,
    deadline: float | None = None,
    max_instances: int = MAX_INSTANCES,
    page_s: float = 60.0,
    ended: dict | None = None,
) -> Iterator[tuple[str, str, str]]:
    """(study, series, instance) UIDs of the CR and DX instances of ``study``, or of the studies dated
    ``since`` (YYYYMMDD) or later, page by page (QIDO-RS, each page read within :data:`MAX_QIDO_BYTES` and
    ``page_s``); it stops at ``max_instances``, at ``deadline`` (``time.monotonic()``), at a page with nothing
    new (an archive that ignores the offset) and at the last page."""
    import json
    import time

    seen: set[str] = set()
    url = f"{base}/studies/{study}/instances" if study else f"{base}/instances"
    for modality in PULL_MODALITIES:
        filters = {"Modality": modality, "includefield": "0020000D,0020000E"}
        if since:
            filters["StudyDate"] = f"{since}-"
        offset = 0
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                log.warning("the search stopped at the pull's deadline, after %d instances", len(seen))
                if ended is not None:
                    ended["why"] = "stopped at the --timeout; run again for the rest"
                return
            page_deadline = min(deadline or math.inf, time.monotonic() + page_s)
            body, _ = bounded_get(
                http, url, base, "application/dicom+json", MAX_QIDO_BYTES, page_deadline,
                params={**filters, "limit": PAGE, "offset": offset},
            )  # fmt: skip
            try:
                page = json.loads(body) if body.strip() else []
            except ValueError:
                raise ArchiveError("the archive's QIDO-RS answer is not JSON") from None
            if not isinstance(page, list):
                raise ArchiveError("the archive's QIDO-RS answer is not a JSON list")
            new = 0
            for item in page:
                uids = _uids(item)
                if all(uids) and uids[2] not in seen:
                    if len(seen) >= max_instances:  # one more than the limit: there is a rest
                        log.warning("the search stopped at --max-instances %d", max_instances)
                        if ended is not None:
                            ended["why"] = f"stopped at --max-instances {max_instances}; run again for the rest"
                        return
                    seen.add(uids[2])
                    new += 1
                    yield uids
            if len(page) < PAGE or not new:  # the last page, or a server that ignores the offset
                break
            offset += len(page)


def _uids(item) -> tuple[str, str, str]:
    """(study, series, instance) UIDs of one QIDO-RS result ("" for what it lacks or holds wrongly)."""
    if not isinstance(item, dict):
        return "", "", ""
    values = []
    for tag in ("0020000D", "0020000E", "00080018"):
        value = item.get(tag, {}).get("Value", [""]) if isinstance(item.get(tag), dict) else [""]
        first = value[0] if isinstance(value, list) and value else ""
        values.append(str(first)[:64] if isinstance(first, str) else "")
    return values[0], values[1], values[2]


def fetch_instance(
    http, base: str, study: str, series: str, instance: str, max_bytes: int, timeout_s: float = 60.0
) -> bytes:
    """The DICOM file of one instance (WADO-RS), read as it arrives, abandoned past ``max_bytes``
    (:class:`TooLarge`: a hostile archive cannot make one fetch fill the memory) or past ``timeout_s`` for the
    whole answer (an archive sending a byte every few seconds). ``http`` is a :func:`session`."""
    import time

    url = f"{base}/studies/{study}/series/{series}/instances/{instance}"
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    # the multipart framing around the file is small
    body, kind = bounded_get(http, url, base, accept, max_bytes + 64 * 1024, time.monotonic() + timeout_s)
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
