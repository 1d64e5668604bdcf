"""The one exception type that the command line turns into a one-line ``error:`` message."""


class TomosegError(ValueError):
    """A problem with the user's input or environment, explained in one line.

    A ``ValueError`` subclass, so library callers can catch it as the bad-value error it is.
    Library messages name the Python parameter (``tile_size``); the CLI rewrites those names
    into its option names (``--tile-size``) before printing ``error: <message>`` on stderr and
    exiting with status 1, without a traceback (unless ``--debug``).
    """


class TomosegWarning(UserWarning):
    """A note to the user about their input or an optional product that was skipped (one line).

    Library callers see it through :mod:`warnings`; the CLI prints ``warning: <message>`` on
    stderr and carries on.
    """
