"""The one exception users see: a one-line message naming the file, what is wrong, what to do."""


class SoftprepError(Exception):
    """Bad input or a refused operation. ``str(error)`` is a complete one-line message."""
