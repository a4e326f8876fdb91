"""Logs without patient data, by construction: what ``ccad serve`` and ``ccad dicom listen`` write.

Only ccad's own messages are written as they are, and ccad formats no value taken from a data set or a
request into one (images are named by a hash of their UID, errors by their type and a fixed reason).
Everything else that reaches the log, third-party log records (pydicom, highdicom, pynetdicom, uvicorn's
errors) and every Python warning (``logging.captureWarnings``), can quote a data set's values ("Invalid
value for VR DA: '19600101'", "The string 'Smith' is unlikely to represent...") and is replaced by a fixed
line naming only its source and category. Exceptions' tracebacks are dropped (their messages can quote
values too). A control character in any message (a newline in a PatientName would forge a log line) is
escaped.

    >>> configure_logging()          # doctest: +SKIP   (once, by the command)
"""

from __future__ import annotations

import logging
import sys

#: Loggers whose messages are ccad's own (formatted from a fixed vocabulary and hashed keys).
OWN_LOGGERS = ("ccad",)
#: Third-party loggers whose messages are safe to keep word for word: uvicorn's start-up and protocol lines
#: (fixed texts; its tracebacks, which could quote a request, are dropped with every other).
KEPT_LOGGERS = ("uvicorn",)
FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def _own(name: str) -> bool:
    return any(name == own or name.startswith(own + ".") for own in OWN_LOGGERS + KEPT_LOGGERS)


def _escape(text: str) -> str:
    return "".join(c if c >= " " or c == "\t" else f"\\x{ord(c):02x}" for c in text)


class PatientDataFilter(logging.Filter):
    """Keeps ccad's own messages (control characters escaped); replaces every other record's message with a
    fixed line; drops tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _own(record.name):
            try:
                message = record.getMessage()
            except Exception:  # a message that cannot be formatted says nothing
                message = "a log message that could not be formatted"
        elif record.name == "py.warnings":
            category = _warning_category(record)
            message = f"a {category} was withheld (warnings may quote data set values)"
        else:
            message = (
                f"a {record.levelname.lower()} message of {record.name} was withheld (it may quote data set values)"
            )
        record.msg, record.args = _escape(message), None
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def _warning_category(record: logging.LogRecord) -> str:
    """The warning's class name, from the formatted warning ('path:line: Category: message')."""
    text = str(record.args[0] if record.args else record.msg)
    for part in text.split(": ")[1:]:
        word = part.strip().split()[0] if part.strip() else ""
        if word.endswith("Warning") and word.isidentifier():
            return word
    return "Python warning"


class StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a record comes, not as it was when the handler was made (as
    logging's own last-resort handler does): a command run in-process, by a test or a notebook, leaves no
    handler bound to a stream that has since been closed or replaced. Its stream cannot be set (give
    :func:`configure_logging` a ``stream`` for that)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):
        return sys.stderr


def configure_logging(level: int = logging.INFO, stream=None) -> logging.Handler:
    """One handler on the root logger (to ``stream``, by default the current stderr), with
    :class:`PatientDataFilter`; Python warnings go through it. Returns the handler."""
    handler = logging.StreamHandler(stream) if stream is not None else StderrHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(PatientDataFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    return handler


def protect(handler: logging.Handler) -> logging.Handler:
    """Add the filter to an existing ``handler`` (uvicorn's own handlers, a test's)."""
    if not any(isinstance(f, PatientDataFilter) for f in handler.filters):
        handler.addFilter(PatientDataFilter())
    return handler
