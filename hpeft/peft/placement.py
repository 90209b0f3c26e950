"""Where the parts of a layer are, per model family: the data behind role targets such as "role:ffn".

A role is a target written "role:" + a role name (a prefix, like "re:"; it needs no quotes in YAML). It
stands for a module pattern or a span (span.py) of the model's family, so one spec places a method the same
way on every family (the adapters' default targets are roles):

  role:attn        the self-attention sublayer: a module whose output is the sublayer's output (before the
                   residual add), or the span from the query projection's input to the output projection's
  role:cross_attn  the cross-attention sublayer (encoder-decoder models)
  role:ffn         the feed-forward sublayer: a module, or the span from its input linear's input to its
                   output linear's output (BART: fc1->fc2; BERT: intermediate.dense->output.dense)
  role:q, role:k, role:v, role:o   the attention projections (self and cross); role:o is the attention
                   output projection. GPT-2 fuses q, k and v in c_attn, so role:q, role:k and role:v name it
  role:ffn_in      the FFN's input linear(s) (Llama: gate_proj and up_proj)
  role:ffn_out     the FFN's output linear

Mamba blocks have one sublayer, the mixer: it takes the FFN's roles (role:ffn = mixer, role:ffn_in =
in_proj, role:ffn_out = out_proj) and there is no role:attn. The family is found from the model: hpeft's own
models by class, transformers models by the `config.model_type` of the outermost PreTrainedModel inside
(hpeft's CausalLMLogits holds it at `.model`). A model of no known family has the generic roles role:attn =
"attn" and role:ffn = "ffn" (hpeft's naming); every model can be targeted by explicit patterns and spans."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from hpeft.peft.span import Span, parse_span

ROLE = "role:"  # the prefix of a role target
ROLES = {  # role name -> what it is (for messages)
    "attn": "self-attention sublayer",
    "cross_attn": "cross-attention sublayer",
    "ffn": "feed-forward sublayer",
    "q": "query projection",
    "k": "key projection",
    "v": "value projection",
    "o": "attention output projection",
    "ffn_in": "FFN input linear",
    "ffn_out": "FFN output linear",
}

Where = str | tuple[str, ...] | Span  # a role's place: a pattern, several patterns, or a span


@dataclass(frozen=True)
class Family:
    """A model family: how to recognise it and where each of its roles is."""

    name: str
    roles: dict[str, Where]
    model_types: tuple[str, ...] = ()  # transformers config.model_type values
    classes: tuple[str, ...] = ()  # qualified names of hpeft model classes (matched on any submodule)

    def describe(self) -> str:
        shown = ", ".join(f"{ROLE}{role} = {_show(where)}" for role, where in self.roles.items())
        return f"{self.name} roles: {shown}"


def _show(where: Where) -> str:
    return " + ".join(where) if isinstance(where, tuple) else str(where)


LLAMA_ROLES: dict[str, Where] = {
    "attn": "self_attn", "q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj",
    "ffn": "mlp", "ffn_in": ("mlp.gate_proj", "mlp.up_proj"), "ffn_out": "mlp.down_proj",
}
# BERT's FFN output linear is `layer.N.output.dense`; the suffix "output.dense" would also match the
# attention's `layer.N.attention.output.dense`, hence a regular expression.
BERT_FFN_OUT = r"re:(.*\.)?layer\.\d+\.output\.dense"

FAMILIES: tuple[Family, ...] = (
    Family("channel_transformer", classes=("hpeft.models.channel_transformer.ChannelTransformer",), roles={
        "attn": "attn", "q": "attn.q", "k": "attn.k", "v": "attn.v", "o": "attn.o",
        "ffn": "ffn", "ffn_in": "ffn.0", "ffn_out": "ffn.2",
    }),
    Family("gpt2", model_types=("gpt2",), roles={
        "attn": "attn", "q": "attn.c_attn", "k": "attn.c_attn", "v": "attn.c_attn", "o": "attn.c_proj",
        "ffn": "mlp", "ffn_in": "mlp.c_fc", "ffn_out": "mlp.c_proj",
    }),
    Family("bert", model_types=("bert", "roberta", "xlm-roberta"), roles={
        "attn": Span("attention.self.query", "attention.output.dense"),
        "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value", "o": "attention.output.dense",
        "ffn": Span("intermediate.dense", BERT_FFN_OUT), "ffn_in": "intermediate.dense", "ffn_out": BERT_FFN_OUT,
    }),
    Family("t5", model_types=("t5", "mt5"), roles={
        "attn": "SelfAttention", "cross_attn": "EncDecAttention", "q": "q", "k": "k", "v": "v", "o": "o",
        "ffn": "DenseReluDense", "ffn_in": r"re:.*\.DenseReluDense\.wi(_[01])?", "ffn_out": "DenseReluDense.wo",
    }),
    Family("bart", model_types=("bart", "mbart"), roles={
        "attn": "self_attn", "cross_attn": "encoder_attn", "q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj",
        "ffn": Span("fc1", "fc2"), "ffn_in": "fc1", "ffn_out": "fc2",
    }),
    Family("llama", model_types=("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"), roles=LLAMA_ROLES),
    Family("mamba", model_types=("mamba",), classes=("hpeft.models.mamba.MambaBackbone",), roles={
        "ffn": "mixer", "ffn_in": "mixer.in_proj", "ffn_out": "mixer.out_proj",
    }),
)
GENERIC = Family("generic", roles={"attn": "attn", "ffn": "ffn"})

# Modules whose weights a transformers model reads itself (`self.dt_proj.weight @ x`, `F.conv1d(x,
# self.conv1d.weight, ...)`) instead of calling the module: a method wrapped around one would never run, and
# its parameters would train nothing. By model_type; hpeft's own Mamba calls its modules. Mamba's x_proj and
# out_proj are called on the CPU but handed to mamba-ssm's fused kernel as weights on a GPU: refused as well, so
# that a config does not train on one machine and silently not on another.
_MAMBA_MIXER = ("mixer.conv1d", "mixer.dt_proj", "mixer.x_proj", "mixer.out_proj")
READ_DIRECTLY: dict[str, tuple[str, ...]] = {"mamba": _MAMBA_MIXER, "falcon_mamba": _MAMBA_MIXER}


def read_directly(model: nn.Module) -> tuple[str, tuple[str, ...]]:
    """(what the model is, for messages; the patterns of modules it reads the weights of directly)."""
    for module in model.modules():
        model_type = getattr(getattr(module, "config", None), "model_type", None)
        if isinstance(model_type, str) and hasattr(module, "base_model_prefix"):
            return f"transformers' {type(module).__name__}", READ_DIRECTLY.get(model_type, ())
    return type(model).__name__, ()


def detect_family(model: nn.Module) -> tuple[Family | None, str]:
    """The model's family (None if hpeft does not know it) and what identified it, for messages: the first
    submodule (outermost first) that is an hpeft model class of a family or a transformers PreTrainedModel."""
    for module in model.modules():
        cls = type(module)
        lineage = {f"{c.__module__}.{c.__qualname__}" for c in cls.__mro__}  # a subclass is of its base's family
        for family in FAMILIES:
            if lineage & set(family.classes):
                return family, f"class {cls.__name__}"
        model_type = getattr(getattr(module, "config", None), "model_type", None)
        if isinstance(model_type, str) and hasattr(module, "base_model_prefix"):
            family = next((f for f in FAMILIES if model_type in f.model_types), None)
            return family, f"{cls.__name__} (model_type {model_type!r})"
    return None, f"class {type(model).__name__}"


def known_families() -> str:
    """Each family with the model types and hpeft classes that identify it."""
    ids = lambda f: [*f.model_types, *(f"hpeft {c.rsplit('.', 1)[-1]}" for c in f.classes)]  # noqa: E731
    return "; ".join(f"{f.name} ({', '.join(ids(f))})" for f in FAMILIES)


def check_target(target, method: str, spans: bool) -> None:
    """Raise ValueError if `target` is not a valid target form for `method` (independent of any model)."""
    if isinstance(target, str) and target.startswith("@"):
        raise ValueError(f"{method} target {target!r}: a role is written with the prefix {ROLE!r} (like 're:'), e.g. "
                         f"{ROLE + target[1:]!r}; roles: {', '.join(ROLE + r for r in ROLES)}")
    if isinstance(target, str) and target.startswith(ROLE):
        if target[len(ROLE):] not in ROLES:
            raise ValueError(f"{method} target {target!r} names no role; roles: {', '.join(ROLE + r for r in ROLES)}")
        return
    try:
        span = parse_span(target)
    except ValueError as err:
        raise ValueError(f"{method} {err}") from None
    if span is None and not (isinstance(target, str) and target.strip()):
        raise ValueError(f"{method} target {target!r} is not a target; a target is a module-name pattern, a role such "
                         f"as 'role:ffn', or a span {{'from': 'fc1', 'to': 'fc2'}} (or 'fc1->fc2')")
    if span is not None:
        for end in (span.source, span.sink):
            if end.startswith(ROLE):
                raise ValueError(f"{method} span target {target!r}: a span's ends are module-name patterns, not roles "
                                 f"({end!r}); the role 'role:ffn' is already a span where the family's FFN is one")
        if not spans:
            raise ValueError(f"{method} target {target!r} is a span, but {method} wraps single modules; spans are for "
                             f"adapters (adapter, compacter, sparse_adapter): target the span's modules one by one")


def label(target) -> str:
    """A target as text: a pattern or role as written, a span as 'FROM->TO'."""
    span = parse_span(target)
    return str(span) if span is not None else target


def expand(model: nn.Module, target, method: str, spans: bool) -> list[str | Span]:
    """The patterns and spans `target` stands for on `model`: a role resolved through the model's family, any
    other target as itself. A role the family lacks, or a span role for a method that wraps single modules,
    is a ValueError naming the family's roles."""
    span = parse_span(target)
    if span is not None:
        return [span]
    if not target.startswith(ROLE):
        return [target]
    role = target[len(ROLE):]
    family, found = detect_family(model)
    where = (family or GENERIC).roles.get(role)
    if where is None:
        if family is None:
            raise ValueError(f"{method} target {target!r}: hpeft has no placement map for this model ({found}), whose "
                             f"generic roles are only role:attn and role:ffn; known families: {known_families()}. "
                             f"Give module-name patterns or spans instead (e.g. {{'from': 'fc1', 'to': 'fc2'}})")
        raise ValueError(f"{method} target {target!r}: the {family.name} family has no {ROLES[role]}; {family.describe()}")
    if isinstance(where, Span) and not spans:
        raise ValueError(f"{method} target {target!r} is the span {where} on {family.name} ({found}), but {method} wraps "
                         f"single modules; {family.describe()}")
    return list(where) if isinstance(where, tuple) else [where]


def roles_hint(model: nn.Module) -> str:
    """The model's family and its roles, or, for an unknown family, how to target it (for error messages)."""
    family, found = detect_family(model)
    if family is None:
        return (f"this model ({found}) is of no family hpeft maps (known: {known_families()}); target modules by "
                f"name or a span {{'from': IN_MODULE, 'to': OUT_MODULE}} (also written 'IN_MODULE->OUT_MODULE')")
    return f"valid targets on this model ({found}): {family.describe()}; or a span 'FROM->TO' of module patterns"
