"""The one exception type for mistakes a user can fix (bad paths, bad files, bad flags)."""


class UserError(Exception):
    """A problem with the user's input, reported by the CLI as one line without a traceback."""


def at_line(path, line_number: int, problem: str) -> UserError:
    """A UserError that names the file and the 1-based line where the problem is."""
    return UserError(f"{path}:{line_number}: {problem}")
