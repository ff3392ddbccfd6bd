"""The root of the errors a user can fix: the CLI reports these as one line; anything else is a bug and
keeps its traceback.

A subclass of ValueError, so code that already raised (and tests that expect) ValueError for a user's
mistake keeps working while the CLI stops treating every ValueError as the user's fault. Raise it where the
message tells the user what to change (an argument, a setting, a name, a file); leave a bug's or an
internal inconsistency's exception as it is.
"""


class UserError(ValueError):
    """A mistake in what the user asked for or configured: bad arguments, settings, names, files."""


class MissingFile(UserError, FileNotFoundError):
    """A file the user named (or a setup step they skipped should have made) is not there.

    Also a FileNotFoundError, which is what these raised before UserError existed.
    """
