"""Span targets: from one module's input to another module's output, within one layer.

A span is written `{"from": "fc1", "to": "fc2"}` or "fc1->fc2" (each end a module-name pattern, see core).
It exists because a sublayer is not always one module: BART's FFN is fc1 -> act -> fc2 inside the layer's
own forward, so a parallel adapter cannot wrap "the FFN". On a span it wraps the `to` module (where its
branch is added) and reads the input that a small `SpanInput` layer on the `from` module keeps for it.
A method that reads only the output (a sequential adapter) wraps the `to` module alone.

Both ends are matched like any pattern and paired by layer: the `from` and `to` modules of a pair share
the part of their names up to the layer index (`model.decoder.layers.3`), so encoder and decoder layers
of the same index never pair."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from hpeft.peft.core import PeftLayer, first_tensor, match

ARROW = "->"
FORMS = "a module-name pattern, a role such as 'role:ffn', or a span {'from': 'fc1', 'to': 'fc2'} (or 'fc1->fc2')"


@dataclass(frozen=True)
class Span:
    """The input of the modules `source` matches to the output of those `sink` matches, paired by layer."""

    source: str
    sink: str

    def __str__(self) -> str:
        return f"{self.source}{ARROW}{self.sink}"


class Placement(NamedTuple):
    """Where a method goes: the module it wraps and, for a span, the module whose input it reads."""

    name: str
    source: str | None = None


def parse_span(target) -> Span | None:
    """The span a target writes (a {"from", "to"} mapping or an "A->B" string), None for any other target.
    A malformed span is a ValueError naming the valid forms."""
    if isinstance(target, Mapping):
        if set(target) != {"from", "to"} or not all(isinstance(v, str) and v.strip() for v in target.values()):
            raise ValueError(f"span target {dict(target)!r} needs exactly the keys 'from' and 'to', each a module-name "
                             f"pattern (e.g. {{'from': 'fc1', 'to': 'fc2'}}); a target is {FORMS}")
        return Span(target["from"].strip(), target["to"].strip())
    if isinstance(target, str) and ARROW in target:
        source, _, sink = target.partition(ARROW)
        if not source.strip() or not sink.strip() or ARROW in sink:
            raise ValueError(f"span target {target!r} must be 'FROM->TO' with one pattern on each side (e.g. 'fc1->fc2')")
        return Span(source.strip(), sink.strip())
    return None


def layer_key(name: str) -> str:
    """The name up to and including its layer index ("model.decoder.layers.3.fc1" -> "model.decoder.layers.3");
    "" for a module outside the layers."""
    parts = name.split(".")
    index = next((i for i, part in enumerate(parts) if part.isdigit()), None)
    return "" if index is None else ".".join(parts[: index + 1])


def pair_span(span: Span, sources: list[str], sinks: list[str], label: str) -> list[Placement]:
    """(to, from) placements of `span`: each `to` module among `sinks` with the one `from` module among
    `sources` of its layer. Returns [] where either end matches nothing (the caller explains why); a `to`
    without exactly one `from` in its layer, or the reverse, is a ValueError naming them."""
    froms = [n for n in sources if match(span.source, n)]
    tos = [n for n in sinks if match(span.sink, n)]
    if not froms or not tos:
        return []
    by_layer: dict[str, list[str]] = {}
    for n in froms:
        by_layer.setdefault(layer_key(n), []).append(n)
    placements, used = [], set()
    for n in tos:
        mates = [m for m in by_layer.get(layer_key(n), []) if m != n]
        if len(mates) != 1:
            what = "no module" if not mates else f"{len(mates)} modules ({', '.join(mates)})"
            raise ValueError(f"span target {label!r} ({span}): {n} has {what} matching {span.source!r} in its layer "
                             f"{layer_key(n) or '(outside the layers)'}; a span needs one 'from' module per 'to' module")
        placements.append(Placement(n, mates[0]))
        used.add(mates[0])
    unpaired = [n for n in froms if n not in used]
    if unpaired:
        raise ValueError(f"span target {label!r} ({span}): {', '.join(unpaired[:4])} match {span.source!r} but no module "
                         f"of their layer matches {span.sink!r}")
    return placements


class SpanInput(PeftLayer):
    """Put on a span's `from` module: keeps the module's input for the layer on the span's `to` module, which
    takes it (once) when it runs. No parameters; it goes with the method that made it (`remove`, save/load)."""

    level = 3  # outermost: the input it keeps is the one the model passes, before any method changes it
    claims_module = False  # not a method on this module: other methods may still target it

    def __init__(self, base_layer: nn.Module, method: str, source_name: str, sink_name: str):
        super().__init__()
        self.base_layer = base_layer
        self.method = method  # accounting lists the layer (with no parameters) under the method that made it
        self.source_name, self.sink_name = source_name, sink_name
        self.kept: torch.Tensor | None = None

    def forward(self, *args, **kwargs):
        self.kept = first_tensor(args, kwargs)
        return self.base_layer(*args, **kwargs)

    def __getstate__(self) -> dict:
        # A copy or pickle never carries an input kept from a pass (a non-leaf tensor cannot even be deep-copied).
        return {**super().__getstate__(), "kept": None}

    def take(self) -> torch.Tensor:
        """The input kept from this forward pass; cleared, so no activation outlives its pass."""
        kept, self.kept = self.kept, None
        if kept is None:
            raise RuntimeError(f"span {self.source_name}->{self.sink_name}: {self.sink_name} ran without {self.source_name} "
                               f"running first in this forward pass; a span must run from a module to one that runs after it")
        return kept

    def extra_repr(self) -> str:
        return f"keeps its input for {self.sink_name}"
