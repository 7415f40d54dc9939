"""The one exception type for errors a user can cause (bad file, bad config, bad checkpoint).

The CLI prints its message on one line, without a traceback, and exits non-zero.
"""


class ScratchLMError(Exception):
    """An error the user can fix; the message says what is wrong and what to do."""
