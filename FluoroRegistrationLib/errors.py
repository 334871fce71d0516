"""The one exception type the library raises for bad input, and its one warning type.

Every message is a single line that names the problem and the fix, so the command line can print
it as it is (``error: ...`` / ``warning: ...``) instead of a traceback.
"""

import warnings


def one_line(message: str) -> str:
    """``message`` with line breaks (e.g. inside a file name or a value the user gave) escaped."""
    return str(message).replace("\r", "\\r").replace("\n", "\\n")


class FluoroRegError(ValueError):
    """Bad input or an impossible request; ``str(err)`` is one line naming the problem and fix."""

    def __init__(self, message: str):
        super().__init__(one_line(message))


class FluoroRegWarning(UserWarning):
    """Input that is usable but suspicious (e.g. a frame's pixel spacing tag that disagrees with the
    calibration); one line naming the problem and what to check."""


def warn(message: str, stacklevel: int = 2) -> None:
    """Emit a one-line :class:`FluoroRegWarning` (the CLI prints it as ``warning: ...``)."""
    warnings.warn(one_line(message), FluoroRegWarning, stacklevel=stacklevel + 1)
