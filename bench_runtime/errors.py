class UserError(Exception):
    """A problem with the user's input or options.

    The CLI prints it as a single `error: ...` line and exits with status 2, so the
    message must name the offending file, option or value on its own.
    """
