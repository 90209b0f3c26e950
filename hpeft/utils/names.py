"""Module-name helpers that need no torch (the report imports them)."""


def layer_index(name: str) -> int | None:
    """The first number in a module name: its layer (block) index; None for modules outside the layers."""
    return next((int(part) for part in name.split(".") if part.isdigit()), None)
