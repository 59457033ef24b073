"""The one base class of the project's input errors.

Every error that says the user's input is wrong (a config key, a model name, a data file, a method option,
a checkpoint that does not fit) derives from `InputError`; commands print it as one line and exit 2.
Anything else that escapes is a bug and shows its traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """Input that cannot be used as given; the message says what was wrong and what would be right."""


class DownloadError(InputError, RuntimeError):
    """A package the input names could not be downloaded (no network, or no such release on the index)."""
