"""Hypotheses a study decides from its numbers. Each is evaluated once per factor level (e.g. per scenario),
on seed-paired figures (arm i and arm j of seed s share that seed's data order and initialisation), and
gives {"id", "statement", "estimate", "ci95", "verdict", "n", ...}. Verdicts come from confidence
intervals (stats.verdict), never from text.

    better     {a, b, figure=metric}            a beats b: mean paired difference a - b on the better side of 0.
                                                b may be a list: the best of them by mean (chosen before testing).
    ratio      {a, b, figure, op, value}        per-seed a / b against a claimed value (op '<=' or '>=').
    threshold  {arms, figure, op, value}        an arm's figure against a value (e.g. adapter bytes in a budget).
    synergy    {hybrids}                        hybrid minus the linear expectation of its parts (each method's
                                                single-method arm closest in that method's parameter count),
                                                weighted by the hybrid's own parameter shares (seed 000, H1).
    frontier   {arms}                           the arm extends the params-metric frontier: it beats every arm
                                                with no more trainable parameters (refuted if one beats it).
    dominates  {any_of, over}                   some arm of any_of has no more parameters than `over` and beats it.
    additive   {combined, parts, reference}     more than the sum of its parts: (combined - reference) minus the sum
                                                of (part - reference), per seed, on the better side of 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hpeft.study.stats import paired, verdict

KINDS = {
    "better": ("a", "b"),
    "ratio": ("a", "b", "figure", "op", "value"),
    "threshold": ("arms", "figure", "op", "value"),
    "synergy": ("hybrids",),
    "frontier": ("arms",),
    "dominates": ("any_of", "over"),
    "additive": ("combined", "parts", "reference"),
}
COMMON = ("id", "kind", "statement", "figure", "direction", "note")
OPS = {"<=": "<", "<": "<", ">=": ">", ">": ">"}
# Figures every run has (collect.run_figures); their better direction. `metric` follows the study.
HIGHER_IS_BETTER = {"quality": True, "efficiency": True, "train_samples_per_s": True}
FIGURES = ("metric", "quality", "params_trainable", "params_deployed", "adapter_bytes_fp16", "flops_forward",
           "flops_train_step", "peak_memory_mb", "train_memory_mb", "train_samples_per_s", "latency_ms_batch1", "fit_seconds", "efficiency", "stage_state_mb")


def check_hypothesis(h, arms: dict, what: str) -> None:
    from hpeft.study.spec import StudyError

    if not isinstance(h, dict):
        raise StudyError(f"{what}: {h!r} must be a mapping with id, kind, statement")
    kind = h.get("kind")
    if kind not in KINDS:
        raise StudyError(f"{what}: kind {kind!r}; valid kinds: {sorted(KINDS)}")
    unknown = sorted(set(h) - set(COMMON) - set(KINDS[kind]))
    if unknown:
        raise StudyError(f"{what} ({kind}): unknown keys {unknown}; valid: {sorted(set(COMMON) | set(KINDS[kind]))}")
    missing = [k for k in ("id", "statement", *KINDS[kind]) if k not in h]
    if missing:
        raise StudyError(f"{what} ({kind}): missing key(s) {missing}")
    for key in ("a", "b", "arms", "hybrids", "any_of", "over", "combined", "parts", "reference"):
        if key in h:
            names = h[key] if isinstance(h[key], list) else [h[key]]
            bad = [n for n in names if n not in arms]
            if bad or not names:
                raise StudyError(f"{what} ({h['id']}): {key} names unknown arms {bad or names}; arms: {sorted(arms)}")
    if "op" in h and h["op"] not in OPS:
        raise StudyError(f"{what} ({h['id']}): op {h['op']!r}; valid: {list(OPS)}")
    if "value" in h and not isinstance(h["value"], (int, float)):
        raise StudyError(f"{what} ({h['id']}): value {h['value']!r} must be a number")
    figure = h.get("figure", "metric")
    if figure not in FIGURES and "direction" not in h and kind in ("better", "frontier", "dominates", "additive"):
        raise StudyError(f"{what} ({h['id']}): figure {figure!r} is not one of {list(FIGURES)}; "
                         "give `direction: minimize|maximize` for another run-record figure")


@dataclass
class Results:
    """Per (arm, level): {seed: figures}, where a level is the tuple of factor values."""

    runs: dict[tuple[str, tuple], dict[int, dict]]
    higher_is_better: bool
    ci: str = "t"
    methods: dict[tuple[str, tuple], dict] = field(default_factory=dict)  # per-method params of the arm

    def levels(self) -> list[tuple]:
        return sorted({level for _, level in self.runs})

    def values(self, arm: str, level: tuple, figure: str) -> dict[int, float]:
        return {s: f[figure] for s, f in self.runs.get((arm, level), {}).items() if f.get(figure) is not None}

    def mean(self, arm: str, level: tuple, figure: str) -> float | None:
        v = list(self.values(arm, level, figure).values())
        return sum(v) / len(v) if v else None

    def params(self, arm: str, level: tuple) -> float | None:
        return self.mean(arm, level, "params_trainable")

    def lower_is_better(self, figure: str, h: dict) -> bool:
        if "direction" in h:
            return h["direction"] == "minimize"
        if figure == "metric":
            return not self.higher_is_better
        return not HIGHER_IS_BETTER.get(figure, False)

    def pair(self, a: str, b: str, level: tuple, figure: str) -> tuple[list[float], list[float]]:
        va, vb = self.values(a, level, figure), self.values(b, level, figure)
        seeds = sorted(set(va) & set(vb))
        return [va[s] for s in seeds], [vb[s] for s in seeds]


def _label(level: tuple) -> str:
    return "/".join(map(str, level))


def _entry(h: dict, level: tuple, scope: str, result: dict | None, claim: str, threshold: float = 0.0, **detail) -> dict:
    ci = result["ci95"] if result else None
    shown = h.get("op", claim)
    return {
        "id": ":".join(p for p in (h["id"], scope, _label(level)) if p),
        "hypothesis": h["id"], "kind": h["kind"], "statement": h["statement"], "scope": scope, "level": list(level),
        "estimate": result["estimate"] if result else None, "ci95": ci,
        "verdict": verdict(ci, claim, threshold), "n": result["n"] if result else 0,
        "claim": f"estimate {shown} {threshold:g}", **detail,
    }


def _best(res: Results, names: list[str], level: tuple, figure: str, lower: bool) -> str | None:
    means = {n: res.mean(n, level, figure) for n in names}
    means = {n: m for n, m in means.items() if m is not None}
    if not means:
        return None
    return (min if lower else max)(means, key=means.get)


def _better(res: Results, h: dict, level: tuple) -> list[dict]:
    figure = h.get("figure", "metric")
    lower = res.lower_is_better(figure, h)
    bs = h["b"] if isinstance(h["b"], list) else [h["b"]]
    b = _best(res, bs, level, figure, lower)
    if b is None:
        return [_entry(h, level, h["a"], None, "<" if lower else ">", note=f"no runs of {bs}")]
    xs, ys = res.pair(h["a"], b, level, figure)
    return [_entry(h, level, h["a"], paired(xs, ys, res.ci) if xs else None, "<" if lower else ">",
                   figure=figure, a=h["a"], b=b, difference="a - b")]


def _ratio(res: Results, h: dict, level: tuple) -> list[dict]:
    """Per seed a / b (paired), for each arm a; the CI is that of the mean ratio."""
    from hpeft.study.stats import describe

    out = []
    for a in h["a"] if isinstance(h["a"], list) else [h["a"]]:
        xs, ys = res.pair(a, h["b"], level, h["figure"])
        d = describe([x / y for x, y in zip(xs, ys) if y], res.ci)
        result = {"estimate": d["mean"], "ci95": d["ci95"], "n": d["n"]} if d["n"] else None
        out.append(_entry(h, level, f"{a}/{h['b']}", result, OPS[h["op"]], float(h["value"]), figure=h["figure"], a=a, b=h["b"]))
    return out


def _threshold(res: Results, h: dict, level: tuple) -> list[dict]:
    from hpeft.study.stats import describe

    out = []
    for arm in h["arms"]:
        d = describe(list(res.values(arm, level, h["figure"]).values()), res.ci)
        result = {"estimate": d["mean"], "ci95": d["ci95"], "n": d["n"]} if d["n"] else None
        out.append(_entry(h, level, arm, result, OPS[h["op"]], float(h["value"]), figure=h["figure"]))
    return out


def synergy_parts(res: Results, hybrid: str, level: tuple) -> list[tuple[str, float]] | None:
    """(single-method arm, the hybrid's parameters of that method) per method of the hybrid; None when a
    method has no single-method arm at this level."""
    methods = res.methods.get((hybrid, level)) or {}
    if len(methods) < 2:
        return None
    parts = []
    for method, params in methods.items():
        alone = [arm for (arm, lvl), m in res.methods.items() if lvl == level and list(m) == [method]]
        if not alone or params <= 0:
            return None
        parts.append((min(alone, key=lambda a: abs(res.methods[(a, level)][method] - params)), float(params)))
    return parts


def synergy(res: Results, hybrid: str, level: tuple, figure: str = "metric") -> dict | None:
    """Per seed: hybrid - sum_m share_m x part_m (shares: the hybrid's own parameters per method)."""
    parts = synergy_parts(res, hybrid, level)
    if parts is None:
        return None
    total = sum(p for _, p in parts)
    h_values = res.values(hybrid, level, figure)
    part_values = [res.values(arm, level, figure) for arm, _ in parts]
    seeds = sorted(set(h_values).intersection(*part_values))
    expected = [sum(p / total * pv[s] for (_, p), pv in zip(parts, part_values)) for s in seeds]
    result = paired([h_values[s] for s in seeds], expected, res.ci) if seeds else None
    return {"parts": [{"arm": a, "params_in_hybrid": p, "params_alone": res.methods[(a, level)][m]}
                      for (a, p), m in zip(parts, res.methods[(hybrid, level)])], "result": result,
            "expected_mean": sum(expected) / len(expected) if expected else None}


def _synergy(res: Results, h: dict, level: tuple) -> list[dict]:
    lower = res.lower_is_better("metric", h)
    out = []
    for hybrid in h["hybrids"]:
        s = synergy(res, hybrid, level)
        if s is None:
            out.append(_entry(h, level, hybrid, None, "<" if lower else ">", note="no single-method arm for every method"))
            continue
        out.append(_entry(h, level, hybrid, s["result"], "<" if lower else ">", parts=s["parts"],
                          linear_expectation=s["expected_mean"], difference="hybrid - linear expectation"))
    return out


def _fit_arms(res: Results, level: tuple) -> list[str]:
    return sorted({arm for arm, lvl in res.runs if lvl == level and (res.params(arm, level) or 0) > 0})


def _frontier(res: Results, h: dict, level: tuple) -> list[dict]:
    figure = h.get("figure", "metric")
    lower = res.lower_is_better(figure, h)
    claim = "<" if lower else ">"
    out = []
    for arm in h["arms"]:
        mine = res.params(arm, level)
        cheaper = [o for o in _fit_arms(res, level) if o != arm and mine is not None and res.params(o, level) <= mine]
        if not cheaper:
            out.append({**_entry(h, level, arm, None, claim, note="no arm has as few trainable parameters: it is the frontier's cheapest point"),
                        "verdict": "supported" if mine is not None else "inconclusive"})
            continue
        tests = {o: paired(*res.pair(arm, o, level, figure), res.ci) for o in cheaper}
        verdicts = {o: verdict(t["ci95"], claim) for o, t in tests.items()}
        best = _best(res, cheaper, level, figure, lower)
        entry = _entry(h, level, arm, tests[best], claim, figure=figure, against=best, difference="arm - best cheaper arm",
                       cheaper={o: verdicts[o] for o in cheaper})
        entry["verdict"] = ("refuted" if "refuted" in verdicts.values()
                            else "supported" if all(v == "supported" for v in verdicts.values()) else "inconclusive")
        out.append(entry)
    return out


def _dominates(res: Results, h: dict, level: tuple) -> list[dict]:
    figure = h.get("figure", "metric")
    lower = res.lower_is_better(figure, h)
    claim = "<" if lower else ">"
    over, limit = h["over"], res.params(h["over"], level)
    eligible = [a for a in h["any_of"] if limit is not None and res.params(a, level) is not None and res.params(a, level) <= limit]
    if not eligible:
        return [{**_entry(h, level, over, None, claim, note=f"none of {h['any_of']} has at most {over}'s trainable parameters"),
                 "verdict": "refuted" if limit is not None else "inconclusive"}]
    tests = {a: paired(*res.pair(a, over, level, figure), res.ci) for a in eligible}
    verdicts = {a: verdict(t["ci95"], claim) for a, t in tests.items()}
    best = _best(res, eligible, level, figure, lower)
    entry = _entry(h, level, over, tests[best], claim, figure=figure, best=best, difference="best eligible arm - over",
                   eligible=verdicts)
    entry["verdict"] = ("supported" if "supported" in verdicts.values()
                        else "refuted" if all(v == "refuted" for v in verdicts.values()) else "inconclusive")
    return [entry]


def _additive(res: Results, h: dict, level: tuple) -> list[dict]:
    figure = h.get("figure", "metric")
    lower = res.lower_is_better(figure, h)
    arms = [h["combined"], *h["parts"], h["reference"]]
    values = {a: res.values(a, level, figure) for a in arms}
    seeds = sorted(set.intersection(*(set(v) for v in values.values())))
    ref = values[h["reference"]]
    combined = [values[h["combined"]][s] - ref[s] for s in seeds]
    summed = [sum(values[p][s] - ref[s] for p in h["parts"]) for s in seeds]
    result = paired(combined, summed, res.ci) if seeds else None
    return [_entry(h, level, h["combined"], result, "<" if lower else ">", figure=figure,
                   difference="(combined - reference) - sum of (part - reference)")]


EVALUATE = {"better": _better, "ratio": _ratio, "threshold": _threshold, "synergy": _synergy,
            "frontier": _frontier, "dominates": _dominates, "additive": _additive}


def evaluate(hypotheses: list[dict], res: Results) -> list[dict]:
    """Every hypothesis at every factor level."""
    return [entry for h in hypotheses for level in res.levels() for entry in EVALUATE[h["kind"]](res, h, level)]
