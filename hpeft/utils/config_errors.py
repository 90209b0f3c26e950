"""Config errors as one line that names the bad key and value.

jsonargparse reports a bad value inside a subclass (`model.init_args.backbone.init_args.d_model: [1]`) as a
tree: every Union it tried (the class, then None), each with its subtypes, its errors and a dump of the
value, with the parser's whole usage in front. The facts a user needs sit at the deepest level of that tree:
the chain of keys that leads there and the reason. These functions keep exactly those; jsonargparse has no
option for a terse report, hence the parsing by hand."""

from __future__ import annotations

import re

_UNION_NOISE = ("Expected a <class 'NoneType'>", "Given value type:", "Subtypes:", "Errors:",
                "Does not validate against any of the Union subtypes", "Problem with given class_path",
                "valid class paths:")
# An __init__'s own message follows "Problem with given class_path 'hpeft.X':", which is kept there.
_INIT_NOISE = tuple(n for n in _UNION_NOISE if not n.startswith(("Problem", "valid")))
_ROLES = {"LightningDataModule": "data", "LightningModule": "model"}
_KEY = re.compile(r'^Parser key "([^"]+)":?$')
_TYPE_NAMES = re.compile(r"<class '(?:[\w.]+\.)?(\w+)'>")
_NESTED = re.compile(r"NestedArg\(key='([^']*)', val=(.*?)\)(?=$|[;,\s])")


def _lines(message: str) -> list[tuple[int, str]]:
    out = []
    for raw in message.splitlines():
        text = raw.strip()
        if text:
            out.append((len(raw) - len(raw.lstrip()), text.removeprefix("- ")))
    return out


def _plain(text: str) -> str:
    return _NESTED.sub(r"\1=\2", _TYPE_NAMES.sub(r"\1", text).replace("typing.", ""))


def tidy_parse_error(message: str) -> str:
    """The key path and the reason of a jsonargparse parse error, on one line."""
    if message.lower().startswith("unrecognized arguments:"):  # name the options, not their (long) values
        options = re.findall(r"(?<!\S)--[\w.-]+", message)
        return f"unrecognized option{'s' if len(options) > 1 else ''} {', '.join(options)}" if options else message
    lines = _lines(message)
    stack: list[tuple[int, str, bool]] = []  # (indent, key, reached through a class_path)
    via_class = False
    deepest: tuple[int, str, list[str]] | None = None  # (indent, dotted key, reasons at that indent)
    given: dict[int, str] = {}
    for indent, text in lines:
        if text.startswith("Problem with given class_path"):
            via_class = True
            continue
        if match := _KEY.match(text):
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, match.group(1), via_class))
            via_class = False
            continue
        if text.startswith("Given value:"):
            given[indent] = text.removeprefix("Given value:").strip()
            continue
        if any(text.startswith(n) for n in _UNION_NOISE):
            continue
        keys = [k for i, k, _ in stack if i < indent]
        joins = [c for i, _, c in stack if i < indent]
        if deepest is None or indent > deepest[0]:
            deepest = (indent, _join(keys, joins), [text])
        elif indent == deepest[0]:
            deepest[2].append(text)
    if deepest is None:
        return " ".join(text for _, text in lines)
    indent, key, reasons = deepest
    reasons = list(dict.fromkeys(reasons))
    if len(reasons) > 1 and all(r.startswith("Expected a ") for r in reasons):
        reason = "expected " + " or ".join(r.removeprefix("Expected a ") for r in reasons)
    else:
        reason = " or ".join(reasons)
    if "got" not in reason.lower():
        value = next((v for i, v in sorted(given.items(), reverse=True) if i < indent), None)
        if value is not None:
            reason = f"{reason}; given {value}"
    return _plain(f"{key}: {reason}" if key else reason)


def _join(keys: list[str], via_class: list[bool]) -> str:
    out = ""
    for key, through_class in zip(keys, via_class):
        out = key if not out else f"{out}.init_args.{key}" if through_class else f"{out}.{key}"
    return out


def tidy_config_error(message: str) -> str:
    """jsonargparse's error for a class whose __init__ raised ends in a dump of the whole namespace and the
    other Union members it tried (None); keep the reasons, named by the config key they belong to."""
    if "Does not validate against any of the Union subtypes" not in message:
        return message
    role = next((key for cls, key in _ROLES.items() if f"{cls}'>" in message), None)
    noise = (*_INIT_NOISE, "Given value:")
    kept = [text for _, text in _lines(message) if not any(text.startswith(n) for n in noise)]
    return (f"{role}: " if role else "") + " ".join(kept)
