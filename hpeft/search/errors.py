"""The one error a search config, its space or its storage raises before any trial starts."""


class SearchError(ValueError):
    """Bad search input: the message names the value and what would be valid. `hpeft search` exits 2 on it."""
