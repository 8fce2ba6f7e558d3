"""The one base class for problems a user can act on: shown as one line, never a traceback."""


class StemdError(Exception):
    """``code`` is a stable protocol error code (see stemd.protocol.ERROR_CODES)."""

    code = "internal"

    def __init__(self, message: str, code: str = ""):
        super().__init__(message)
        if code:
            self.code = code
