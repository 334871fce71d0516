"""The one exception type the library raises for bad input.

Every message is a single line that names the problem and the fix, so the command line can print
it as it is (``error: ...``) instead of a traceback.
"""


class FluoroRegError(ValueError):
    """Bad input or an impossible request; ``str(err)`` is one line naming the problem and fix."""

    def __init__(self, message: str):
        if "\n" in message:
            raise AssertionError("FluoroRegError messages must be one line")
        super().__init__(message)
