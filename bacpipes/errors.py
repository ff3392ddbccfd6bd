"""The root of the errors a user can fix: the CLI reports these as one line; anything else is a bug and
keeps its traceback.

A subclass of ValueError, so code that already raised (and tests that expect) ValueError for a user's
mistake keeps working while the CLI stops treating every ValueError as the user's fault.
"""


class UserError(ValueError):
    """A mistake in what the user asked for or configured: bad arguments, settings, names, files."""
