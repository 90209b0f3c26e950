"""The injection mechanism every PEFT method uses.

A method is a *spec* (a small typed object: hyperparameters + target patterns) registered by name.
`apply(model, specs)` freezes the model, resolves each spec's targets to module names, checks every
target, and lets each spec wrap its modules in a `PeftLayer`. Everything else (accounting, save/load,
merge) finds methods by walking modules for `PeftLayer`, so a new method only adds a file.

Target patterns, matched against module names (with the `base_layer` hops of wrappers left out, so a
pattern keeps meaning the same module after other methods wrapped it):
  "q"                   a name component suffix: matches "blocks.0.attn.q", "blocks.1.attn.q", ...
  "ffn.0"               a dotted suffix: matches "blocks.0.ffn.0", ...
  "blocks.*.attn.q"     a glob (fnmatch) over the whole name
  "re:blocks\\.[01]\\..*"  a regular expression over the whole name
A spec's `layers` (a list of layer indices) keeps only modules of those layers; a module's layer index
is the first number in its name (`blocks.3.attn.q`, `transformer.h.3.attn`, `model.layers.3.mlp`).
A glob's `*` crosses dots: `encoder.layer.*.output` also matches `encoder.layer.0.attention.output` on BERT.
A wildcard pattern whose matches differ in type or width is therefore a warning that names them, and
`hpeft inspect` lists every pattern with the modules it matched.

Two more kinds of target (placement.py, span.py):
  "role:ffn"            a role: where the model's family has that part of each layer, a module pattern or a
                        span (roles: attn, cross_attn, ffn, q, k, v, o, ffn_in, ffn_out). The family is
                        found from the model (transformers' config.model_type, hpeft's model class)
  {"from": "fc1", "to": "fc2"}  a span, also written "fc1->fc2": the input of one module to the output of
                        another in the same layer, for sublayers that are no single module (BART's FFN is
                        fc1 -> act -> fc2). Only methods with `spans` (adapters) take spans: the layer goes on
                        the `to` module and, where it reads the sublayer's input (a parallel adapter), a
                        parameter-free `SpanInput` on the `from` module keeps that input for it
Adapters default to roles (Houlsby ["role:attn", "role:ffn"], Pfeiffer and parallel ["role:ffn"]), so they
sit where the papers put them on every mapped family; patterns and spans place them on any other model. A
placement that cannot work (a parallel adapter across a module whose widths differ) is a PlacementError
that names the model's roles.

Stacking. Several different methods may wrap one module (UniPELT puts LoRA and a prefix on `v`); the
same method twice on one module is a clash. Wrappers nest by `level`, whatever the order they were
applied in: weight-level methods (LoRA, IA3, BitFit: level 0) sit next to the base module, output-level
ones (adapters: 1) around them, and sequence-level ones (prompt, prefix: 2), which change the output's
length, outermost; within a level, the later method wraps the earlier. DoRA alone sits at level -1, directly
on the base module, because its output depends on the base weight itself (its norm per output row).
Merging then folds the innermost layers first (see io.merge).

Specs that share modules across the layers they make (Adapter(shared=True), Compacter's rule) start
afresh on each `apply`, so one spec object applied to two models gives two independent sets.
"""

from __future__ import annotations

import fnmatch
import inspect
import itertools
import re
import warnings
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from hpeft.utils.names import layer_index  # noqa: F401 - part of this module's API (methods import it from here)

if TYPE_CHECKING:  # span.py imports this module
    from hpeft.peft.span import Placement

METHODS: dict[str, type["MethodSpec"]] = {}
_apply_order = itertools.count()


class _LinearLikeMeta(type):
    def __instancecheck__(cls, obj) -> bool:
        return isinstance(obj, nn.Linear) or is_transposed_linear(obj)


class LinearLike(metaclass=_LinearLikeMeta):
    """isinstance() target for nn.Linear and transformers' Conv1D (GPT-2's linear with a transposed weight).
    Duck-typed so that hpeft does not import transformers unless the model does."""


def is_transposed_linear(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "nx")


def find_transformers_model(model: nn.Module) -> tuple[str, nn.Module] | None:
    """(logical path, module) of the outermost transformers PreTrainedModel inside `model`, the model itself
    included (hpeft's CausalLMLogits holds one at `.model`), or None. Duck-typed, as LinearLike is."""
    for path, module in model.named_modules():
        config = getattr(module, "config", None)
        if isinstance(getattr(config, "model_type", None), str) and hasattr(module, "base_model_prefix") \
                and hasattr(module, "get_input_embeddings"):
            return logical_name(path), module
    return None


def linear_dims(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a linear-like module."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if is_transposed_linear(module):
        return module.nx, module.nf
    raise TypeError(f"{type(module).__name__} is not a linear layer (nn.Linear or transformers Conv1D)")


def first_tensor(args: tuple, kwargs: dict) -> torch.Tensor:
    """The main input of a module call: the first positional argument, else `hidden_states` (transformers
    layers are called with keywords), else the first tensor keyword argument."""
    if args:
        return args[0]
    if isinstance(kwargs.get("hidden_states"), torch.Tensor):
        return kwargs["hidden_states"]
    return next(v for v in kwargs.values() if isinstance(v, torch.Tensor))


def weight_options(module: nn.Module) -> dict:
    """device and dtype for a method's new parameters: those of the base module's weights, or where the base
    stores integers (4-bit layers) the dtype it computes in (bitsandbytes' `compute_dtype`), else float32."""
    raw = raw_module(module)
    w = next(raw.parameters())
    compute = getattr(raw, "compute_dtype", None)
    return {"device": w.device, "dtype": w.dtype if w.is_floating_point() else (compute or torch.float32)}


class PeftLayer(nn.Module):
    """A module a method put around a base module (kept as `base_layer`). `method` names the method;
    `level` orders nesting (see the module docstring)."""

    method: ClassVar[str] = ""
    level: ClassVar[int] = 0
    # False for helper layers that are no method on their module (a span's SpanInput): they do not clash.
    claims_module: ClassVar[bool] = True

    # The wrapped base module's weight and bias, as HF peft's layers expose them: transformers code reads
    # them off the modules it calls (T5's FFN casts its input to `self.wo.weight.dtype`), which failed with
    # AttributeError once a method wrapped `wo`. A base without them raises AttributeError as before.
    @property
    def weight(self) -> torch.Tensor:
        return raw_module(self.base_layer).weight

    @property
    def bias(self) -> torch.Tensor | None:
        return raw_module(self.base_layer).bias

    def method_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """This method's own parameters (not those of the module it wraps)."""
        base_ids = {id(p) for p in self.base_layer.parameters()}
        return [(n, p) for n, p in self.named_parameters() if id(p) not in base_ids]

    def method_buffers(self) -> list[tuple[str, torch.Tensor]]:
        """This method's own persistent buffers (e.g. SparseAdapter's masks): saved with its parameters."""
        found = []
        for module_name, module in self.named_modules():
            if module_name == "base_layer" or module_name.startswith("base_layer."):
                continue
            for name, buf in module._buffers.items():
                if buf is not None and name not in module._non_persistent_buffers_set:
                    found.append((f"{module_name}.{name}" if module_name else name, buf))
        return found

    def deployed_params(self, own: list[tuple[str, nn.Parameter]]) -> int:
        """How many of `own` (this layer's parameters, each counted once model-wide) a deployed model keeps:
        the non-zeros of a pruned weight, the flattened prefix of a reparameterised one."""
        return sum(p.numel() for _, p in own)


class TransparentLayer:
    """Mixin for a PeftLayer around a part of a transformers model that the model itself reaches into (a decoder
    stack's `embed_tokens` and `layers`, an attention's `layer_idx`): attributes the layer lacks are those of the
    module it wraps. Only for these: on an ordinary layer a fallback would make, e.g., an adapter around a LoRA
    layer look mergeable."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)


def require_unstacked(layer: "PeftLayer") -> None:
    """Merging folds into the module directly under the layer; peft.merge folds innermost layers first."""
    if isinstance(layer.base_layer, PeftLayer):
        raise ValueError(f"{layer.method} wraps another method's layer ({layer.base_layer.method}); merge with "
                         f"peft.merge(model), which folds the innermost layers first")


def raw_module(module: nn.Module) -> nn.Module:
    """The base module under any number of PEFT wrappers."""
    while isinstance(module, PeftLayer):
        module = module.base_layer
    return module


class PlacementError(ValueError):
    """A method cannot go where its target puts it (e.g. a parallel adapter across unequal widths); `apply`
    adds the model's roles to the message."""


class MethodSpec:
    """Base of method specs. Subclasses set `name`, `layer_types`, `level` and implement `wrap`."""

    name: ClassVar[str] = ""
    # Module types this method can wrap (judged on the base module under any wrappers).
    layer_types: ClassVar[tuple[type, ...]] = (nn.Module,)
    level: ClassVar[int] = 0
    # Whether targets may be spans (see the module docstring); such specs implement wrap_span.
    spans: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            METHODS[cls.name] = cls

    def __init__(self, targets: list[str | dict], layers: list[int] | None = None):
        from hpeft.peft.placement import check_target  # placement builds on this module

        if not targets:
            raise ValueError(f"{self.name} targets=[] is empty; give module-name patterns such as ['q', 'v', 'ffn.0']")
        for target in targets:
            check_target(target, self.name, self.spans)
        self.targets = [t if isinstance(t, str) else dict(t) for t in targets]  # a span as a plain dict (JSON)
        self.layers = None if layers is None else sorted(int(i) for i in layers)

    def config(self) -> dict:
        """The spec as plain data (for adapter.json, summary.json and the W&B config)."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p not in ("self", "kwargs")]
        return {"name": self.name, **{n: getattr(self, n, None) for n in names}}

    def start_apply(self) -> None:
        """Called when `apply` begins using this spec: forget state kept from an earlier model (modules
        shared across the layers of one model must not be shared with another)."""

    def expand(self, model: nn.Module) -> list["MethodSpec"]:
        """The plain specs this spec stands for; composites (UniPELT, MAM, S4 groups) return several."""
        return [self]

    def check(self, module: nn.Module, module_name: str) -> None:
        """Raise ValueError if this spec cannot wrap `module` (the base module); called for every target
        before the model is changed."""

    def wrap(self, module: nn.Module, module_name: str) -> PeftLayer:
        """A new layer around `module` (a base module or, when stacking, another method's layer)."""
        raise NotImplementedError

    def span_input(self) -> bool:
        """Whether this spec's layer on a span's `to` module reads the `from` module's input (else a span
        places it on its `to` module as that module's own target)."""
        return False

    def check_span(self, source: nn.Module, source_name: str, module: nn.Module, module_name: str) -> None:
        """Like `check`, for a span from `source`'s input to `module`'s output (base modules); only called
        where span_input() is true."""
        self.check(module, module_name)

    def wrap_span(self, module: nn.Module, module_name: str, source: PeftLayer) -> PeftLayer:
        """Like `wrap`, with `source` the SpanInput layer on the span's `from` module (call source.take() in
        forward for its input)."""
        raise NotImplementedError

    def after_apply(self, model: nn.Module, layers: list[tuple[str, PeftLayer]]) -> None:
        """Called once with the root model after all of this spec's layers are in place."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


def is_wildcard(pattern: str) -> bool:
    """A regular expression or a glob (as opposed to a name suffix)."""
    return pattern.startswith("re:") or any(c in pattern for c in "*?[")


def match(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    if is_wildcard(pattern):
        return fnmatch.fnmatchcase(name, pattern)
    return name == pattern or name.endswith("." + pattern)


def logical_name(path: str) -> str:
    """A module path with the wrappers' `base_layer` hops removed: the name patterns are matched against."""
    return ".".join(part for part in path.split(".") if part != "base_layer")


def positions(model: nn.Module) -> dict[str, str]:
    """Logical name -> path of the outermost module at that position, for every module a method may
    target (base modules and their wrappers; never the inner parts of a method such as an adapter's
    projections)."""
    modules = dict(model.named_modules())
    found: dict[str, str] = {}
    for path in modules:
        if not path or _inside_method(path, modules):
            continue
        found.setdefault(logical_name(path), path)
    return found


def _inside_method(path: str, modules: dict[str, nn.Module]) -> bool:
    parts = path.split(".")
    return any(
        isinstance(modules.get(".".join(parts[:i])), PeftLayer) and parts[i] != "base_layer" for i in range(1, len(parts))
    )


def count_layers(model: nn.Module) -> int:
    """How many layers (blocks) the model has, by the layer indices in its module names."""
    indices = {layer_index(n) for n in positions(model)}
    indices.discard(None)
    return max(indices) + 1 if indices else 0


def target_placements(model: nn.Module, spec: MethodSpec,
                      where: dict[str, str] | None = None) -> list[tuple[str, list, list[Placement]]]:
    """For each of the spec's targets, in order: its text, the patterns and spans it stands for (a role
    resolved through the model's family, see placement.py) and the placements (span.Placement) they select:
    modules of a type the method wraps, in the spec's layers, each with its span's `from` module (any module
    of the same layer) or None. A target that selects nothing gets an empty list."""
    from hpeft.peft import placement  # placement and span build on this module
    from hpeft.peft.span import Placement, Span, pair_span

    where = positions(model) if where is None else where
    in_layers = [n for n in where if spec.layers is None or layer_index(n) in spec.layers]
    candidates = [n for n in in_layers if isinstance(raw_module(model.get_submodule(where[n])), spec.layer_types)]
    found = []
    for target in spec.targets:
        label = placement.label(target)
        parts = placement.expand(model, target, spec.name, spec.spans)
        hits: list[Placement] = []
        for part in parts:
            if isinstance(part, Span):
                hits += pair_span(part, in_layers, candidates, label)
            else:
                hits += [Placement(n) for n in candidates if match(part, n)]
        found.append((label, parts, hits))
    return found


def pattern_matches(model: nn.Module, spec: MethodSpec, where: dict[str, str] | None = None) -> list[tuple[str, list[str]]]:
    """(target, the logical module names it selects: for a span its `to` modules) for each of the spec's
    targets, in order (see target_placements). A target that selects nothing gets an empty list."""
    return [(label, [p.name for p in hits]) for label, _, hits in target_placements(model, spec, where)]


def module_kind(model: nn.Module, name: str, where: dict[str, str] | None = None) -> str:
    """A module's type, with its widths for a linear layer: what a pattern's matches should share."""
    base = raw_module(model.get_submodule((where or {}).get(name, name)))
    if isinstance(base, LinearLike):
        i, o = linear_dims(base)
        return f"{type(base).__name__}({i}->{o})"
    return type(base).__name__


def mixed_kinds(model: nn.Module, pattern: str, hits: list[str], where: dict[str, str] | None = None) -> dict[str, list[str]] | None:
    """For a wildcard pattern whose matches differ in type or width: kind -> the modules of that kind; else None.
    A glob's `*` crosses dots (`encoder.layer.*.output` also matches `encoder.layer.0.attention.output` on BERT),
    so such a mix is usually a pattern wider than meant. A bare `*` (BitFit's "everything") is meant to mix."""
    if pattern == "*" or not is_wildcard(pattern):
        return None
    kinds: dict[str, list[str]] = {}
    for h in hits:
        kinds.setdefault(module_kind(model, h, where), []).append(h)
    return kinds if len(kinds) > 1 else None


def resolve_targets(model: nn.Module, spec: MethodSpec, where: dict[str, str] | None = None) -> list[str]:
    """Logical names of the modules the spec's targets select (for a span, its `to` modules); see resolve_placements."""
    return [p.name for p in resolve_placements(model, spec, where)]


def resolve_placements(model: nn.Module, spec: MethodSpec, where: dict[str, str] | None = None) -> list[Placement]:
    """Where the spec's targets put it (span.Placement: a module, and a span's `from` module or None). Every
    target must select at least one module of a type the method can wrap; otherwise the error names the target
    and lists what it could have matched. A wildcard pattern whose matches differ in kind or width is a warning
    naming them (see mixed_kinds). A module selected twice is placed once, by its first target."""
    from hpeft.peft.span import Span

    from hpeft.peft.placement import read_directly

    where = positions(model) if where is None else where
    what, unwrappable = read_directly(model)
    selected: dict[str, Placement] = {}
    for label, parts, hits in target_placements(model, spec, where):
        bypassed = [p.name for p in hits if any(match(u, p.name) for u in unwrappable)]
        wide = all(isinstance(part, str) and is_wildcard(part) for part in parts)
        if bypassed and wide and len(bypassed) < len(hits):
            hits = [p for p in hits if p.name not in bypassed]  # a wide pattern (BitFit's "*") leaves them out
        elif bypassed:
            raise PlacementError(f"{spec.name} target {label!r} selects {_abbreviate(bypassed, 4)}, whose weights {what} "
                                 f"reads directly instead of calling the module: a method there would never run; "
                                 f"leave out {', '.join(unwrappable)} (or use hpeft's own model, which calls them)")
        if not hits:
            raise ValueError(_no_match_message(model, spec, label, parts, where))
        for part in parts:
            pattern = part.sink if isinstance(part, Span) else part
            mixed = mixed_kinds(model, pattern, [p.name for p in hits if match(pattern, p.name)], where)
            if mixed:
                groups = "; ".join(f"{k}: {_abbreviate(v, 4)}" for k, v in mixed.items())
                warnings.warn(f"{spec.name} target pattern {pattern!r} matches modules of different kinds or widths ({groups}); "
                              "narrow it (a glob's * crosses dots; 're:' patterns match whole names) if that is not meant",
                              stacklevel=3)
        for p in hits:
            selected.setdefault(p.name, p)
    return list(selected.values())


def _no_match_message(model: nn.Module, spec: MethodSpec, label: str, parts: list, where: dict[str, str]) -> str:
    """Why a target selected nothing: per pattern (for a span, the end that fails), and for a role the family's roles."""
    from hpeft.peft.placement import roles_hint
    from hpeft.peft.span import Span

    whys = []
    for part in parts:
        if isinstance(part, Span):
            if not any(match(part.source, n) for n in where):
                whys.append(f"its 'from' pattern {part.source!r} matches no module")
            else:
                whys.append(f"its 'to' pattern {part.sink!r}: {_why_no_match(model, spec, part.sink, where)}")
        else:
            whys.append(_why_no_match(model, spec, part, where) if len(parts) == 1 else f"{part!r}: {_why_no_match(model, spec, part, where)}")
    if label.startswith("role:"):
        shown = " + ".join(str(p) for p in parts)
        return f"{spec.name} target {label!r} ({shown}): {'; '.join(whys)}. {roles_hint(model)}"
    return f"{spec.name} target pattern {label!r}: {'; '.join(whys)}"


def _why_no_match(model: nn.Module, spec: MethodSpec, pattern: str, where: dict[str, str]) -> str:
    kinds = ", ".join(t.__name__ for t in spec.layer_types)
    named = [n for n in where if match(pattern, n)]
    if spec.layers is not None and any(layer_index(n) is not None for n in named):
        return f"it matches no module of layers {spec.layers} that {spec.name} can wrap ({kinds}); the model has {count_layers(model)} layers"
    if named:
        return f"it matches {named[:5]} but {spec.name} wraps only {kinds}"
    candidates = [n for n, path in where.items() if isinstance(raw_module(model.get_submodule(path)), spec.layer_types)]
    return f"it matches no module; {spec.name} can target ({kinds}): {_abbreviate(candidates)}"


def _abbreviate(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def peft_layers(model: nn.Module) -> list[tuple[str, PeftLayer]]:
    """Every method layer with its module path (outer wrappers before the layers they wrap)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PeftLayer)]


def _chain(module: nn.Module) -> list[PeftLayer]:
    layers = []
    while isinstance(module, PeftLayer):
        layers.append(module)
        module = module.base_layer
    return layers


def freeze(model: nn.Module) -> None:
    """Freeze the base: every parameter no method owns (methods applied earlier keep training)."""
    owned = {id(p) for _, layer in peft_layers(model) for _, p in layer.method_parameters()}
    for p in model.parameters():
        if id(p) not in owned:
            p.requires_grad_(False)


def apply(model: nn.Module, specs: list[MethodSpec], freeze_base: bool = True) -> nn.Module:
    """Inject `specs` into `model` in place and return it. The base is frozen first (unless
    `freeze_base=False`), so afterwards exactly the methods' parameters are trainable.

    All targets are resolved and checked before anything is changed: a bad pattern, a bad
    hyperparameter for a layer or one method twice on a module leave the model untouched."""
    for spec in specs:
        if not isinstance(spec, MethodSpec):
            raise TypeError(f"peft.apply expects method specs such as peft.LoRA(...), got {spec!r}; known methods: {sorted(METHODS)}")
    plain = expand_specs(model, specs)
    where = positions(model)
    on_module: dict[str, list[MethodSpec]] = {
        n: [_spec_of(layer) for layer in _chain(model.get_submodule(path)) if layer.claims_module] for n, path in where.items()
    }
    plan: list[tuple[MethodSpec, list[Placement]]] = []
    for spec in plain:
        placements = resolve_placements(model, spec, where)
        for n, source in placements:
            other = next((s for s in on_module[n] if s.name == spec.name), None)
            if other is not None:
                raise ValueError(f"methods clash on module {n!r}: {other!r} and {spec!r} both put {spec.name} on it")
            _check(model, spec, n, source, where)
            on_module[n].append(spec)
        plan.append((spec, placements))
    if freeze_base:
        freeze(model)
    for spec in plain:
        spec.apply_order = next(_apply_order)
        spec.start_apply()
    for spec, placements in plan:
        added = []
        for n, source in placements:
            tap = _insert_span_input(model, source, n, spec) if source is not None and spec.span_input() else None
            added.append((n, _insert(model, real_path(model, n), n, spec, tap)))
        spec.after_apply(model, added)
    return model


def _check(model: nn.Module, spec: MethodSpec, name: str, source: str | None, where: dict[str, str]) -> None:
    """spec.check (or check_span) on the base modules; a PlacementError gets the model's roles appended."""
    base = raw_module(model.get_submodule(where[name]))
    try:
        if source is not None and spec.span_input():
            spec.check_span(raw_module(model.get_submodule(where[source])), source, base, name)
        else:
            spec.check(base, name)
    except PlacementError as err:
        from hpeft.peft.placement import roles_hint

        raise PlacementError(f"{err}. {roles_hint(model)}") from None


def _insert_span_input(model: nn.Module, source: str, sink: str, spec: MethodSpec) -> PeftLayer:
    """A SpanInput around the module at logical `source`, outermost (it keeps the input the model passes)."""
    from hpeft.peft.span import SpanInput

    path = real_path(model, source)
    layer = SpanInput(model.get_submodule(path), spec.name, source, sink)
    layer.spec = spec
    set_submodule(model, path, layer)
    return layer


def expand_specs(model: nn.Module, specs: list[MethodSpec]) -> list[MethodSpec]:
    """The plain specs `specs` stand for, expanded until each stands for itself (a composite's Prefix may in
    turn become the cache route's PrefixCache on a transformers model)."""
    plain: list[MethodSpec] = []
    for spec in specs:
        parts = spec.expand(model)
        plain += parts if len(parts) == 1 and parts[0] is spec else expand_specs(model, parts)
    return plain


def real_path(model: nn.Module, name: str) -> str:
    """Path of the outermost module at logical `name` now (wrappers inserted since may have moved it)."""
    path, module = [], model
    for part in name.split("."):
        while isinstance(module, PeftLayer):
            path.append("base_layer")
            module = module.base_layer
        path.append(part)
        module = module._modules[part]
    return ".".join(path)


def _insert(model: nn.Module, path: str, name: str, spec: MethodSpec, tap: PeftLayer | None = None) -> PeftLayer:
    """Wrap the module at `path` (or the layer inside it where `spec.level` belongs) in spec's layer; `tap`:
    the SpanInput of a span's `from` module, for a layer that reads it."""
    module = model.get_submodule(path)
    while isinstance(module, PeftLayer) and module.level > spec.level:
        path, module = f"{path}.base_layer", module.base_layer
    layer = spec.wrap(module, name) if tap is None else spec.wrap_span(module, name, tap)
    layer.spec = spec
    set_submodule(model, path, layer)
    return layer


def remove(model: nn.Module, specs: list[MethodSpec] | None = None) -> nn.Module:
    """Take the layers of `specs` (default: every method) out of `model`, putting back what they wrapped.
    Their parameters go with them; the base stays frozen."""
    doomed = None if specs is None else {id(s) for s in specs}
    while True:
        found = next(((n, layer) for n, layer in peft_layers(model)
                      if doomed is None or id(getattr(layer, "spec", None)) in doomed), None)
        if found is None:
            return model
        set_submodule(model, found[0], found[1].base_layer)


def _spec_of(layer: PeftLayer) -> MethodSpec:
    spec = getattr(layer, "spec", None)
    if spec is None:
        spec = MethodSpec.__new__(METHODS.get(layer.method, MethodSpec))
        spec.targets, spec.layers = [], None
    return spec


def applied_specs(model: nn.Module) -> list[MethodSpec]:
    """The distinct specs injected into `model`, in injection order (so re-applying them in this order
    rebuilds the same nesting and parameter names)."""
    seen: dict[int, MethodSpec] = {}
    for _, layer in peft_layers(model):
        spec = getattr(layer, "spec", None)
        if spec is not None:
            seen.setdefault(id(spec), spec)
    return sorted(seen.values(), key=lambda s: getattr(s, "apply_order", 0))


def spec_from_config(config: dict) -> MethodSpec:
    """Rebuild a spec from `MethodSpec.config()` output (adapter.json)."""
    config = dict(config)
    name = config.pop("name", None)
    if name not in METHODS:
        raise ValueError(f"unknown PEFT method {name!r}; known methods: {sorted(METHODS)}")
    return METHODS[name](**config)
