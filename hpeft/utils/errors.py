"""How a command refuses bad input: one line on stderr, exit status 2, no traceback."""

import sys


def fail(message: str) -> None:
    print(f"hpeft: error: {message}", file=sys.stderr)
    raise SystemExit(2)


_UNION_NOISE = ("Expected a <class 'NoneType'>", "Given value type:", "Given value:", "Subtypes:", "Errors:",
                "Does not validate against any of the Union subtypes")
_ROLES = {"LightningDataModule": "data", "LightningModule": "model"}


def tidy_config_error(message: str) -> str:
    """jsonargparse's error for a class whose __init__ raised ends in a dump of the whole namespace and the
    other Union members it tried (None); keep the reasons, named by the config key they belong to."""
    if "Does not validate against any of the Union subtypes" not in message:
        return message
    role = next((key for cls, key in _ROLES.items() if f"{cls}'>" in message), None)
    kept = [line.strip().removeprefix("- ") for line in message.splitlines()
            if line.strip() and not any(line.strip().removeprefix("- ").startswith(n) for n in _UNION_NOISE)]
    return (f"{role}: " if role else "") + " ".join(kept)
