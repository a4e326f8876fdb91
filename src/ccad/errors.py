"""Exceptions the library raises for problems a user can fix.

The CLI turns every :class:`CcadError` into a one-line message and exit code 2;
the web service turns them into 4xx answers. Anything else is a bug.
"""


class CcadError(Exception):
    """Base class: a problem with the user's input, data, model or settings."""


class DataError(CcadError):
    """A data folder or manifest that cannot be used as given."""


class ImageReadError(DataError):
    """One file that is not a readable image (corrupt, truncated, not an image, too large)."""


class ImageTooLargeError(ImageReadError):
    """An image over the pixel limit, or a codestream larger than its header says: refused before decoding."""


class NotScoredError(ImageReadError):
    """A DICOM image outside what ccad scores (``ccad.io.dicom.not_scored_reason``): a CT, a lateral view, a
    Secondary Capture of a photo. Not an error of the file: its reason is reported instead of a score."""


class ModelError(CcadError):
    """A model file, run folder or weights that cannot be loaded or built."""


class ConfigError(CcadError):
    """A setting that is out of range or contradicts another."""
