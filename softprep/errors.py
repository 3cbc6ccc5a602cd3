"""The one exception users see: a one-line message naming the file, what is wrong, what to do."""


class SoftprepError(Exception):
    """Bad input or a refused operation. ``str(error)`` is a complete one-line message."""


def printable(text: object) -> str:
    """``text`` with every non-printable character escaped (``\\n``, ``\\x1b``, ...): names that come
    from files (ids, class names, paths) stay on one line and cannot drive the terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


def install_hint(extra: str) -> str:
    """The command that installs an extra, from a clone of softprep (it is not on a package registry):
    ``pip install -e '.[lightning]'`` in the checkout (or ``pip install 'dist/softprep-VERSION-py3-none-any.whl[lightning]'``
    after ``python -m build``)."""
    return f"pip install -e '.[{extra}]' in the softprep checkout"
