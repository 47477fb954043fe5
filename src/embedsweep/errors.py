"""The one exception type for mistakes a user can fix (bad config, bad data, unreachable service)."""


class UserError(Exception):
    """A problem the user can fix; shown as one line, without a traceback."""
