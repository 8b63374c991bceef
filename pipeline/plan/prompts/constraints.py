"""Compiling a bank: axes, templates and constraints checked and turned into fast lookup structures.

Constraints become per-axis rules over bit masks of value indices; `check_reachable` walks every
combination the sampler can reach and proves that no axis is ever left without a value."""

from __future__ import annotations

import itertools
import math
import re
import string
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from pipeline.plan.prompts.schema import (
    AXIS_NAME,
    TEMPLATE_KEY,
    Axis,
    AxisSpec,
    AxisValue,
    ConstraintSpec,
    InvalidBank,
    TemplateSpec,
)
from pipeline.plan.prompts.text import clean_text, fix_articles

# ---------------------------------------------------------------------------- validation


def check_weight(where: str, weight: float) -> None:
    if not (math.isfinite(weight) and weight > 0):
        raise InvalidBank(f"{where}: weight must be a positive number (got {weight!r})")


def first_duplicate(ids: Sequence[str]) -> str | None:
    seen: set[str] = set()
    for item in ids:
        if item in seen:
            return item
        seen.add(item)
    return None


def compile_axis(name: str, spec: AxisSpec) -> Axis:
    where = f"axes.{name}"
    if not AXIS_NAME.fullmatch(name) or name == TEMPLATE_KEY:
        raise InvalidBank(f"{where}: an axis name must be a lower-case identifier other than '{TEMPLATE_KEY}'")
    if not spec.values:
        raise InvalidBank(f"{where}: the axis has no values")
    duplicate = first_duplicate([value.id for value in spec.values])
    if duplicate is not None:
        raise InvalidBank(f"{where}: duplicate value id '{duplicate}'")
    for value in spec.values:
        check_weight(f"{where}.{value.id}", value.weight)
    pick = None
    if spec.pick is not None:
        pick = (spec.pick.min, spec.pick.max)
        if not pick[0] <= pick[1] <= len(spec.values):
            raise InvalidBank(
                f"{where}.pick: need min <= max <= {len(spec.values)} (the number of values), got {pick}"
            )
    values = tuple(
        AxisValue(v.id, v.weight, tuple(clean_text(phrase) for phrase in v.phrases)) for v in spec.values
    )
    for value in values:
        if not all(value.phrases):
            raise InvalidBank(f"{where}.{value.id}: a phrase is empty once spaces and separators are trimmed")
    return Axis(name, values, pick)


@dataclass(frozen=True)
class Segment:
    """A piece of a template; an optional one is dropped when one of its axes renders empty."""

    text: str
    axes: tuple[str, ...]
    optional: bool


@dataclass(frozen=True)
class CompiledTemplate:
    """A template split at its [optional] parts.

    `tidy` says that the template rendered whole needs no clean-up (phrases are cleaned at load),
    so the common case, nothing empty, skips the separator clean-up and only fixes articles.
    """

    id: str
    text: str
    segments: tuple[Segment, ...]
    tidy: bool


def compile_template(spec: TemplateSpec, axes: Mapping[str, Axis]) -> CompiledTemplate:
    where = f"templates.{spec.id}"
    segments = []
    for piece in re.split(r"(\[[^\[\]]*\])", " ".join(spec.text.split())):
        optional = piece.startswith("[") and piece.endswith("]")
        text = piece[1:-1] if optional else piece
        if "[" in text or "]" in text:
            raise InvalidBank(f"{where}: unbalanced or nested [ ] in {spec.text!r}")
        try:
            fields = [field for field in string.Formatter().parse(text) if field[1] is not None]
        except ValueError as exc:
            raise InvalidBank(f"{where}: bad placeholder ({exc})") from None
        for _, name, format_spec, conversion in fields:
            if name not in axes:
                raise InvalidBank(f"{where}: placeholder {{{name}}} names no axis (axes: {', '.join(axes)})")
            if format_spec or conversion:
                raise InvalidBank(f"{where}: placeholder {{{name}}} may not carry a format spec or conversion")
        segments.append(Segment(text, tuple(dict.fromkeys(field[1] for field in fields)), optional))
    whole = "".join(segment.text for segment in segments)
    example = whole.format_map({name: "x" for name in axes})
    return CompiledTemplate(spec.id, whole, tuple(segments), clean_text(example) == fix_articles(example))


def describe(spec: ConstraintSpec) -> str:
    def terms(mapping: Mapping[str, list[str]]) -> str:
        return ", ".join(f"{axis}: [{', '.join(ids)}]" for axis, ids in mapping.items())

    kind, then = ("then_only", spec.then_only) if spec.then_only is not None else ("then_not", spec.then_not)
    return f"(if {terms(spec.when)} {kind} {terms(then or {})})"


def _value_mask(where: str, axis: Axis, ids: Sequence[str]) -> int:
    known = axis.ids()
    mask = 0
    for value_id in ids:
        if value_id not in known:
            raise InvalidBank(
                f"{where}: axis '{axis.name}' has no value '{value_id}' (values: {', '.join(known)})"
            )
        mask |= 1 << known.index(value_id)
    return mask


@dataclass(frozen=True)
class Rule:
    """A forbidden combination, enforced when its last axis (in bank order) is sampled.

    Masks are bit sets over an axis's values; a list axis matches when any picked value is in the
    mask. When every condition matches the values already drawn, the `excluded` values of `axis`
    are forbidden.
    """

    constraint: int
    axis: int
    conditions: tuple[tuple[int, int], ...]
    excluded: int

    def applies(self, chosen: Sequence[int]) -> bool:
        return all(chosen[axis] & mask for axis, mask in self.conditions)


def compile_constraint(index: int, spec: ConstraintSpec, axes: Sequence[Axis]) -> list[Rule]:
    """Turn `if ... then_not/then_only ...` into one forbidden combination per consequent axis."""
    where = f"constraints[{index}] {describe(spec)}"
    if (spec.then_not is None) == (spec.then_only is None):
        raise InvalidBank(f"{where}: give exactly one of then_not and then_only")
    then = spec.then_not if spec.then_not is not None else spec.then_only
    if not then:
        raise InvalidBank(f"{where}: the consequence names no axis")
    position = {axis.name: i for i, axis in enumerate(axes)}
    for name in [*spec.when, *then]:
        if name not in position:
            raise InvalidBank(f"{where}: unknown axis '{name}' (axes: {', '.join(position)})")
    both = set(spec.when) & set(then)
    if both:
        raise InvalidBank(f"{where}: axis '{sorted(both)[0]}' is both in the condition and the consequence")
    conditions = {
        position[name]: _value_mask(where, axes[position[name]], ids) for name, ids in spec.when.items()
    }
    rules = []
    for name, ids in then.items():
        k = position[name]
        mask = _value_mask(where, axes[k], ids)
        if spec.then_only is not None:
            mask = ((1 << len(axes[k].values)) - 1) & ~mask
        if mask:
            combination = {**conditions, k: mask}
            last = max(combination)
            others = tuple((j, m) for j, m in sorted(combination.items()) if j != last)
            rules.append(Rule(index, last, others, combination[last]))
    return rules


def excluded_by(rules: Sequence[Rule], chosen: Sequence[int]) -> int:
    mask = 0
    for rule in rules:
        if rule.applies(chosen):
            mask |= rule.excluded
    return mask


def bits_of(mask: int) -> list[int]:
    return [i for i in range(mask.bit_length()) if mask >> i & 1]


def _choices(axis: Axis, available: int) -> Iterator[int]:
    """Every value mask the sampler can draw for `axis` out of `available`."""
    bits = bits_of(available)
    if axis.pick is None:
        yield from (1 << i for i in bits)
        return
    for count in range(axis.pick[0], min(axis.pick[1], len(bits)) + 1):
        for combination in itertools.combinations(bits, count):
            yield sum(1 << i for i in combination)


def check_reachable(axes: Sequence[Axis], rules: Sequence[Sequence[Rule]], labels: Sequence[str]) -> None:
    """Prove that no reachable partial draw leaves an axis with too few values.

    Depth-first over axes in bank order, remembering a partial draw only by the axes that a later
    rule still looks at, so the search stays small even when many axes are constrained.
    """
    live = [
        {j for later in rules[k:] for rule in later for j, _ in rule.conditions if j < k}
        for k in range(len(axes) + 1)
    ]
    seen: set[tuple[int, tuple[int, ...]]] = set()

    def visit(k: int, chosen: tuple[int, ...]) -> None:
        if k == len(axes):
            return
        key = (k, tuple(mask if j in live[k] else 0 for j, mask in enumerate(chosen)))
        if key in seen:
            return
        seen.add(key)
        axis = axes[k]
        available = ((1 << len(axis.values)) - 1) & ~excluded_by(rules[k], chosen)
        if len(bits_of(available)) < (1 if axis.pick is None else axis.pick[0]):
            culprits = [rule for rule in rules[k] if rule.applies(chosen)]
            named = "; ".join(dict.fromkeys(labels[rule.constraint] for rule in culprits))
            context = ", ".join(
                f"{axes[j].name}={'|'.join(axes[j].values[i].id for i in bits_of(chosen[j]))}"
                for j in sorted({j for rule in culprits for j, _ in rule.conditions})
            )
            verb = "leaves" if len(set(rule.constraint for rule in culprits)) == 1 else "leave"
            raise InvalidBank(f"{named} {verb} axis '{axis.name}' with too few values to sample when {context}")
        for choice in _choices(axis, available) if k in live[k + 1] else (0,):
            visit(k + 1, (*chosen, choice))

    visit(0, ())


