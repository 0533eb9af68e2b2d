"""The one exception type for mistakes a user can make while dreaming.

Its message is a single line that names the problem and the way out; ``deepdream.cli.run_main``
prints it as ``error: ...`` and exits non-zero, so no script shows a traceback for it.
"""

from __future__ import annotations


class DreamError(ValueError):
    """Bad input to a dream (file, flag, model choice); the message says what to do instead."""
