"""The one exception type that the command line turns into a one-line ``error:`` message."""


class TomosegError(Exception):
    """A problem with the user's input or environment, explained in one line.

    The CLI catches it, prints ``error: <message>`` on stderr and exits with status 1, without a
    traceback (unless ``--debug``). Library callers get an ordinary exception.
    """
