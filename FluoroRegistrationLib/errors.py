"""The one exception type the library raises for bad input, and its one warning type.

Every message is a single line that names the problem and the fix, so the command line can print
it as it is (``error: ...`` / ``warning: ...``) instead of a traceback.
"""

import warnings


class FluoroRegError(ValueError):
    """Bad input or an impossible request; ``str(err)`` is one line naming the problem and fix."""

    def __init__(self, message: str):
        if "\n" in message:
            raise AssertionError("FluoroRegError messages must be one line")
        super().__init__(message)


class FluoroRegWarning(UserWarning):
    """Input that is usable but suspicious (e.g. a frame's pixel spacing tag that disagrees with the
    calibration); one line naming the problem and what to check."""


def warn(message: str, stacklevel: int = 2) -> None:
    """Emit a one-line :class:`FluoroRegWarning` (the CLI prints it as ``warning: ...``)."""
    if "\n" in message:
        raise AssertionError("FluoroRegWarning messages must be one line")
    warnings.warn(message, FluoroRegWarning, stacklevel=stacklevel + 1)
