"""The injection mechanism every PEFT method uses.

A method is a *spec* (a small typed object: hyperparameters + target patterns) registered by name.
`apply(model, specs)` freezes the model, resolves each spec's targets to module names, checks that no
two methods claim the same module, and lets each spec wrap its modules in a `PeftLayer`. Everything
else (accounting, save/load, merge) finds methods by walking modules for `PeftLayer`, so a new method
only adds a file.

Target patterns, matched against fully qualified module names:
  "q"                   a name component suffix: matches "blocks.0.attn.q", "blocks.1.attn.q", ...
  "ffn.0"               a dotted suffix: matches "blocks.0.ffn.0", ...
  "blocks.*.attn.q"     a glob (fnmatch) over the whole name
  "re:blocks\\.[01]\\..*"  a regular expression over the whole name
"""

from __future__ import annotations

import fnmatch
import inspect
import re
from typing import ClassVar

from torch import nn

METHODS: dict[str, type["MethodSpec"]] = {}


class PeftLayer(nn.Module):
    """A module a method put in place of (or around) a base module. `method` names the method."""

    method: ClassVar[str] = ""

    def method_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """This method's own parameters (not the wrapped base module's)."""
        base = getattr(self, "base_layer", None)
        base_ids = {id(p) for p in base.parameters()} if base is not None else set()
        return [(n, p) for n, p in self.named_parameters() if id(p) not in base_ids]


class MethodSpec:
    """Base of method specs. Subclasses set `name`, `layer_types` and implement `wrap`."""

    name: ClassVar[str] = ""
    # Module types this method can wrap; a target matching another type is an error.
    layer_types: ClassVar[tuple[type[nn.Module], ...]] = (nn.Module,)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            METHODS[cls.name] = cls

    def __init__(self, targets: list[str]):
        self.targets = list(targets)

    def config(self) -> dict:
        """The spec as plain data (for adapter.json, summary.json and the W&B config)."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {"name": self.name, **{n: getattr(self, n) for n in names}}

    def wrap(self, module: nn.Module, module_name: str) -> PeftLayer:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


def match(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return name == pattern or name.endswith("." + pattern)


def resolve_targets(model: nn.Module, spec: MethodSpec) -> list[str]:
    """Module names the spec's patterns select. Every pattern must select at least one module of a type
    the method can wrap; otherwise the error names the pattern and lists what it could have matched."""
    modules = dict(model.named_modules())
    # A module some method already wraps stays a candidate (judged by the module it wraps), so that
    # targeting it again is reported as a clash between the two methods, not as a type mismatch.
    candidates = [
        n for n, m in modules.items()
        if n and isinstance(getattr(m, "base_layer", m) if isinstance(m, PeftLayer) else m, spec.layer_types)
        and not _inside_peft_layer(n, modules)
    ]
    selected: list[str] = []
    for pattern in spec.targets:
        hits = [n for n in candidates if match(pattern, n)]
        if not hits:
            wrong_type = [n for n, m in modules.items() if n and match(pattern, n)]
            kinds = ", ".join(t.__name__ for t in spec.layer_types)
            why = (
                f"it matches {wrong_type[:5]} but {spec.name} wraps only {kinds}"
                if wrong_type
                else f"it matches no module; {spec.name} can target ({kinds}): {_abbreviate(candidates)}"
            )
            raise ValueError(f"{spec.name} target pattern {pattern!r}: {why}")
        selected += [h for h in hits if h not in selected]
    return selected


def _inside_peft_layer(name: str, modules: dict[str, nn.Module]) -> bool:
    parts = name.split(".")
    return any(isinstance(modules.get(".".join(parts[:i])), PeftLayer) for i in range(1, len(parts)))


def _abbreviate(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def peft_layers(model: nn.Module) -> list[tuple[str, PeftLayer]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PeftLayer)]


def freeze(model: nn.Module) -> None:
    """Freeze the base: every parameter no method owns (methods applied earlier keep training)."""
    owned = {id(p) for _, layer in peft_layers(model) for _, p in layer.method_parameters()}
    for p in model.parameters():
        if id(p) not in owned:
            p.requires_grad_(False)


def apply(model: nn.Module, specs: list[MethodSpec], freeze_base: bool = True) -> nn.Module:
    """Inject `specs` into `model` in place and return it. The base is frozen first (unless
    `freeze_base=False`), so afterwards exactly the methods' parameters are trainable.

    All targets are resolved and checked before anything is changed: a bad pattern or two methods
    claiming one module leave the model untouched."""
    for spec in specs:
        if not isinstance(spec, MethodSpec):
            raise TypeError(f"peft.apply expects method specs such as peft.LoRA(...), got {spec!r}; known methods: {sorted(METHODS)}")
    claimed: dict[str, MethodSpec] = {n: _spec_of(m) for n, m in peft_layers(model)}
    plan: list[tuple[MethodSpec, list[str]]] = []
    for spec in specs:
        names = resolve_targets(model, spec)
        for n in names:
            if n in claimed:
                raise ValueError(f"methods clash on module {n!r}: {claimed[n]!r} and {spec!r} both target it")
            claimed[n] = spec
        plan.append((spec, names))
    # Build every layer before changing the model, so a spec that fails to wrap (e.g. a rank larger
    # than a layer) leaves the model as it was.
    layers = [(n, spec.wrap(model.get_submodule(n), n), spec) for spec, names in plan for n in names]
    if freeze_base:
        freeze(model)
    for n, layer, spec in layers:
        layer.spec = spec
        set_submodule(model, n, layer)
    return model


def _spec_of(layer: PeftLayer) -> MethodSpec:
    return getattr(layer, "spec", None) or MethodSpec([layer.method])


def applied_specs(model: nn.Module) -> list[MethodSpec]:
    """The distinct specs injected into `model`, in injection order."""
    seen: list[MethodSpec] = []
    for _, layer in peft_layers(model):
        spec = getattr(layer, "spec", None)
        if spec is not None and all(spec is not s for s in seen):
            seen.append(spec)
    return seen


def spec_from_config(config: dict) -> MethodSpec:
    """Rebuild a spec from `MethodSpec.config()` output (adapter.json)."""
    config = dict(config)
    name = config.pop("name", None)
    if name not in METHODS:
        raise ValueError(f"unknown PEFT method {name!r}; known methods: {sorted(METHODS)}")
    return METHODS[name](**config)
