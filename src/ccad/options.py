"""One definition per setting. A settings class's field says its default, its command-line flag, the flag's
unit and its help; the CLI derives its flags from the class (:func:`ccad.cli.base.add_settings`) and turns a
:class:`~ccad.errors.ConfigError` that names a field (`` `max_upload_bytes` ``) into the flag's words
(``--max-upload-mb``). The class's ``check()`` is the one place its values are checked.

    @dataclass
    class ServeSettings:
        workers: int = option(2, "decoding threads (and ONNX Runtime threads)")
        max_upload_bytes: int = option(20 * 2**20, "largest file", flag="--max-upload-mb", unit=2**20)
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def option(default: Any, help: str, flag: str | None = None, unit: float = 1, metavar: str | None = None) -> Any:
    """A settings field with a command-line flag: ``flag`` (default: ``--`` and the field's name with dashes),
    ``unit`` (the flag's value times ``unit`` is the field's: megabytes to bytes), ``help``. A bool field is a
    switch: ``--name`` when its default is False, a ``--no-...`` flag when it is True."""
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag, "unit": unit, "metavar": metavar})


@dataclass(frozen=True)
class Option:
    """A settings field as the command line sees it."""

    name: str
    flag: str
    kind: type  # int, float, str, Path or bool
    default: Any
    unit: float
    help: str
    metavar: str | None

    def to_flag(self, value: Any) -> Any:
        """A field's value in the flag's unit (what ``--help`` shows as the default)."""
        return value / self.unit if self.unit != 1 and value is not None else value

    def from_flag(self, value: Any) -> Any:
        """The field's value for what was given on the command line."""
        if value is None or self.kind is bool:
            return value
        if self.kind is Path:
            return Path(value)
        return self.kind(value * self.unit) if self.unit != 1 else value


def options(cls: type) -> list[Option]:
    """The fields of a settings class that have a flag, in their order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        meta = f.metadata
        out.append(
            Option(
                f.name,
                meta["flag"] or "--" + f.name.replace("_", "-"),
                _kind(hints[f.name]),
                f.default,
                meta["unit"],
                meta["help"],
                meta["metavar"],
            )
        )
    return out


def _kind(hint: Any) -> type:
    """``int``, ``float``, ``str``, ``Path`` or ``bool`` of a field's type (``Path | None`` -> ``Path``)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    if hint not in (int, float, str, Path, bool):
        raise TypeError(f"a settings field of type {hint} cannot be a flag")
    return hint
