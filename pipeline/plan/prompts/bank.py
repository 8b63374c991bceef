"""Clinical-descriptor prompt bank: load and validate `prompts/*.yaml`, sample prompts deterministically.

A bank holds descriptor axes (weighted values, each with one or more phrases), sentence templates
with `{axis}` placeholders, a negative prompt and constraints between axes. The sampler draws axes
in bank order and drops the values that a constraint forbids given what is already drawn,
renormalising the rest. Loading proves that this never leaves an axis without a value, so sampling
needs no retries and always terminates.

Every sample consumes the same fixed number of uniform draws, so `sample_many(n, seed)` equals `n`
calls of `sample` on `numpy.random.default_rng(seed)`, in any process.
"""

from __future__ import annotations

import itertools
import json
import math
import operator
import re
import string
from bisect import bisect_right
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.core.digests import digest
from pipeline.core.yamlio import load_model
from pipeline.errors import PromptBankError

_AXIS_NAME = re.compile(r"[a-z][a-z0-9_]*")
_TEMPLATE_KEY = "template"  # attribute key of the template id; no axis may take this name
_CHUNK = 4096  # rows of uniforms drawn at once by sample_many: bounds memory, keeps the stream

# ---------------------------------------------------------------------------- file schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_Text = Annotated[str, Field(min_length=1)]
_Ids = Annotated[list[_Text], Field(min_length=1)]


class _ValueSpec(_Strict):
    id: _Text
    weight: float
    phrases: Annotated[list[_Text], Field(min_length=1)]


class _PickSpec(_Strict):
    min: int = Field(0, ge=0)
    max: int = Field(ge=1)


class _AxisSpec(_Strict):
    values: list[_ValueSpec]
    pick: _PickSpec | None = None


class _TemplateSpec(_Strict):
    id: _Text
    text: _Text
    weight: float = 1.0


class _ConstraintSpec(_Strict):
    when: Annotated[dict[str, _Ids], Field(alias="if", min_length=1)]
    then_not: dict[str, _Ids] | None = None
    then_only: dict[str, _Ids] | None = None
    reason: str | None = None


class _BankSpec(_Strict):
    negative: str
    axes: dict[str, _AxisSpec]
    templates: list[_TemplateSpec]
    constraints: list[_ConstraintSpec] = []


class _Invalid(Exception):
    """A problem in the bank's content; `PromptBank.load` prefixes it with the file name."""


# ---------------------------------------------------------------------------- public values


@dataclass(frozen=True)
class AxisValue:
    id: str
    weight: float
    phrases: tuple[str, ...]


@dataclass(frozen=True)
class Axis:
    """One descriptor axis. `pick` is (min, max) for a list axis, None for exactly one value."""

    name: str
    values: tuple[AxisValue, ...]
    pick: tuple[int, int] | None = None

    def ids(self) -> tuple[str, ...]:
        return tuple(value.id for value in self.values)


@dataclass(frozen=True)
class Template:
    id: str
    text: str
    weight: float


@dataclass(frozen=True)
class PromptSample:
    text: str
    negative: str
    attributes: dict[str, str | list[str]]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types, under the column names of the shard schema."""
        attributes = {k: list(v) if isinstance(v, list) else v for k, v in self.attributes.items()}
        return {"prompt": self.text, "negative_prompt": self.negative, "attributes": attributes}


# ---------------------------------------------------------------------------- text


def _join(phrases: Sequence[str]) -> str:
    if len(phrases) < 2:
        return "".join(phrases)
    return f"{', '.join(phrases[:-1])} and {phrases[-1]}"


_SEPARATORS = re.compile(r"\s*([,;:])[\s,;:]*")
_ARTICLES = tuple((re.compile(f" {a} (?=[aeioAEIO]|8|1[18]\\b)"), f" {a}n ") for a in "aA")


def _fix_articles(text: str) -> str:
    """'a' -> 'an' before a vowel or a number said with one ('an 8 mm', 'an 11 mm')."""
    text = f" {text}"
    for pattern, replacement in _ARTICLES:
        text = pattern.sub(replacement, text)
    return text[1:]


def _clean(text: str) -> str:
    """Single spaces, one separator where an empty part left several, none at the ends, 'a'/'an'."""
    return _fix_articles(_SEPARATORS.sub(r"\1 ", " ".join(text.split())).strip(" ,;:"))


# ---------------------------------------------------------------------------- validation


def _check_weight(where: str, weight: float) -> None:
    if not (math.isfinite(weight) and weight > 0):
        raise _Invalid(f"{where}: weight must be a positive number (got {weight!r})")


def _first_duplicate(ids: Sequence[str]) -> str | None:
    seen: set[str] = set()
    for item in ids:
        if item in seen:
            return item
        seen.add(item)
    return None


def _compile_axis(name: str, spec: _AxisSpec) -> Axis:
    where = f"axes.{name}"
    if not _AXIS_NAME.fullmatch(name) or name == _TEMPLATE_KEY:
        raise _Invalid(f"{where}: an axis name must be a lower-case identifier other than '{_TEMPLATE_KEY}'")
    if not spec.values:
        raise _Invalid(f"{where}: the axis has no values")
    duplicate = _first_duplicate([value.id for value in spec.values])
    if duplicate is not None:
        raise _Invalid(f"{where}: duplicate value id '{duplicate}'")
    for value in spec.values:
        _check_weight(f"{where}.{value.id}", value.weight)
    pick = None
    if spec.pick is not None:
        pick = (spec.pick.min, spec.pick.max)
        if not pick[0] <= pick[1] <= len(spec.values):
            raise _Invalid(
                f"{where}.pick: need min <= max <= {len(spec.values)} (the number of values), got {pick}"
            )
    values = tuple(
        AxisValue(v.id, v.weight, tuple(_clean(phrase) for phrase in v.phrases)) for v in spec.values
    )
    for value in values:
        if not all(value.phrases):
            raise _Invalid(f"{where}.{value.id}: a phrase is empty once spaces and separators are trimmed")
    return Axis(name, values, pick)


@dataclass(frozen=True)
class _Segment:
    """A piece of a template; an optional one is dropped when one of its axes renders empty."""

    text: str
    axes: tuple[str, ...]
    optional: bool


@dataclass(frozen=True)
class _CompiledTemplate:
    """A template split at its [optional] parts.

    `tidy` says that the template rendered whole needs no clean-up (phrases are cleaned at load),
    so the common case, nothing empty, skips the separator clean-up and only fixes articles.
    """

    id: str
    text: str
    segments: tuple[_Segment, ...]
    tidy: bool


def _compile_template(spec: _TemplateSpec, axes: Mapping[str, Axis]) -> _CompiledTemplate:
    where = f"templates.{spec.id}"
    segments = []
    for piece in re.split(r"(\[[^\[\]]*\])", " ".join(spec.text.split())):
        optional = piece.startswith("[") and piece.endswith("]")
        text = piece[1:-1] if optional else piece
        if "[" in text or "]" in text:
            raise _Invalid(f"{where}: unbalanced or nested [ ] in {spec.text!r}")
        try:
            fields = [field for field in string.Formatter().parse(text) if field[1] is not None]
        except ValueError as exc:
            raise _Invalid(f"{where}: bad placeholder ({exc})") from None
        for _, name, format_spec, conversion in fields:
            if name not in axes:
                raise _Invalid(f"{where}: placeholder {{{name}}} names no axis (axes: {', '.join(axes)})")
            if format_spec or conversion:
                raise _Invalid(f"{where}: placeholder {{{name}}} may not carry a format spec or conversion")
        segments.append(_Segment(text, tuple(dict.fromkeys(field[1] for field in fields)), optional))
    whole = "".join(segment.text for segment in segments)
    example = whole.format_map({name: "x" for name in axes})
    return _CompiledTemplate(spec.id, whole, tuple(segments), _clean(example) == _fix_articles(example))


def _describe(spec: _ConstraintSpec) -> str:
    def terms(mapping: Mapping[str, list[str]]) -> str:
        return ", ".join(f"{axis}: [{', '.join(ids)}]" for axis, ids in mapping.items())

    kind, then = ("then_only", spec.then_only) if spec.then_only is not None else ("then_not", spec.then_not)
    return f"(if {terms(spec.when)} {kind} {terms(then or {})})"


def _value_mask(where: str, axis: Axis, ids: Sequence[str]) -> int:
    known = axis.ids()
    mask = 0
    for value_id in ids:
        if value_id not in known:
            raise _Invalid(
                f"{where}: axis '{axis.name}' has no value '{value_id}' (values: {', '.join(known)})"
            )
        mask |= 1 << known.index(value_id)
    return mask


@dataclass(frozen=True)
class _Rule:
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


def _compile_constraint(index: int, spec: _ConstraintSpec, axes: Sequence[Axis]) -> list[_Rule]:
    """Turn `if ... then_not/then_only ...` into one forbidden combination per consequent axis."""
    where = f"constraints[{index}] {_describe(spec)}"
    if (spec.then_not is None) == (spec.then_only is None):
        raise _Invalid(f"{where}: give exactly one of then_not and then_only")
    then = spec.then_not if spec.then_not is not None else spec.then_only
    if not then:
        raise _Invalid(f"{where}: the consequence names no axis")
    position = {axis.name: i for i, axis in enumerate(axes)}
    for name in [*spec.when, *then]:
        if name not in position:
            raise _Invalid(f"{where}: unknown axis '{name}' (axes: {', '.join(position)})")
    both = set(spec.when) & set(then)
    if both:
        raise _Invalid(f"{where}: axis '{sorted(both)[0]}' is both in the condition and the consequence")
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
            rules.append(_Rule(index, last, others, combination[last]))
    return rules


def _excluded(rules: Sequence[_Rule], chosen: Sequence[int]) -> int:
    mask = 0
    for rule in rules:
        if rule.applies(chosen):
            mask |= rule.excluded
    return mask


def _bits(mask: int) -> list[int]:
    return [i for i in range(mask.bit_length()) if mask >> i & 1]


def _choices(axis: Axis, available: int) -> Iterator[int]:
    """Every value mask the sampler can draw for `axis` out of `available`."""
    bits = _bits(available)
    if axis.pick is None:
        yield from (1 << i for i in bits)
        return
    for count in range(axis.pick[0], min(axis.pick[1], len(bits)) + 1):
        for combination in itertools.combinations(bits, count):
            yield sum(1 << i for i in combination)


def _check_reachable(axes: Sequence[Axis], rules: Sequence[Sequence[_Rule]], labels: Sequence[str]) -> None:
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
        available = ((1 << len(axis.values)) - 1) & ~_excluded(rules[k], chosen)
        if len(_bits(available)) < (1 if axis.pick is None else axis.pick[0]):
            culprits = [rule for rule in rules[k] if rule.applies(chosen)]
            named = "; ".join(dict.fromkeys(labels[rule.constraint] for rule in culprits))
            context = ", ".join(
                f"{axes[j].name}={'|'.join(axes[j].values[i].id for i in _bits(chosen[j]))}"
                for j in sorted({j for rule in culprits for j, _ in rule.conditions})
            )
            verb = "leaves" if len(set(rule.constraint for rule in culprits)) == 1 else "leave"
            raise _Invalid(f"{named} {verb} axis '{axis.name}' with too few values to sample when {context}")
        for choice in _choices(axis, available) if k in live[k + 1] else (0,):
            visit(k + 1, (*chosen, choice))

    visit(0, ())


# ---------------------------------------------------------------------------- sampling

# With u in [0, 1), round-to-nearest keeps u * x below x for every positive float x, so
# `int(u * n) < n` and `bisect_right(cumulative, u * cumulative[-1]) < len(cumulative)` need no clamp.


def _cumulative(weights: Sequence[float]) -> list[float]:
    return list(itertools.accumulate(weights))


def _draw(cumulative: Sequence[float], u: float) -> int:
    """Index drawn with probability proportional to its weight, from one uniform in [0, 1)."""
    return bisect_right(cumulative, u * cumulative[-1])


_Table = tuple[tuple[AxisValue, ...], tuple[int, ...], list[float]]  # values, their bits, cumulative weights


class _AxisSampler:
    """What the hot loop needs for one axis, with caches keyed by what constrains it.

    The excluded values depend only on the axes that the axis's rules look at, and the draw table
    only on the excluded values, so both are worked out once per situation, not once per sample.
    """

    def __init__(self, axis: Axis, rules: Sequence[_Rule], at: int) -> None:
        self.name = axis.name
        self.at = at  # where this axis's uniforms start in a sample's row
        self.values = axis.values
        self.single = axis.pick is None
        self.low, self.high = axis.pick or (1, 1)
        self.width = 2 if self.single else 1 + 2 * self.high  # uniforms used per sample
        self._rules = tuple(rules)
        context = sorted({j for rule in rules for j, _ in rule.conditions})
        self._context = operator.itemgetter(*context) if context else None
        self._excluded: dict[Any, int] = {}
        self._tables: dict[int, _Table] = {}
        self.fixed = None if self._context else self.table(0)  # the only table of an unconstrained axis

    def excluded(self, chosen: Sequence[int]) -> int:
        if self._context is None:
            return 0
        key = self._context(chosen)
        mask = self._excluded.get(key)
        if mask is None:
            mask = self._excluded[key] = _excluded(self._rules, chosen)
        return mask

    def table(self, excluded: int) -> _Table:
        table = self._tables.get(excluded)
        if table is None:
            kept = [i for i in range(len(self.values)) if not excluded >> i & 1]
            table = (
                tuple(self.values[i] for i in kept),
                tuple(1 << i for i in kept),
                _cumulative([self.values[i].weight for i in kept]),
            )
            self._tables[excluded] = table
        return table

    def draw_list(self, excluded: int, u: Sequence[float]) -> tuple[int, list[str], str]:
        """A list axis: a count, then (value, phrase) pairs; values come back in bank order."""
        at = self.at
        count = self.low + int(u[at] * (min(self.high, len(self.table(excluded)[0])) - self.low + 1))
        mask = 0
        for slot in range(count):
            _, bits, cumulative = self.table(excluded | mask)
            mask |= bits[_draw(cumulative, u[at + 1 + 2 * slot])]
        picked = [self.values[i] for i in _bits(mask)]
        phrases = [
            value.phrases[int(u[at + 2 + 2 * slot] * len(value.phrases))] for slot, value in enumerate(picked)
        ]
        return mask, [value.id for value in picked], _join(phrases)


# ---------------------------------------------------------------------------- the bank


class PromptBank:
    """A validated template bank, ready to sample; build it with `PromptBank.load`."""

    def __init__(self, path: str, spec: _BankSpec) -> None:
        self.path = path
        self.negative = spec.negative
        self.axes: Mapping[str, Axis] = MappingProxyType(
            {n: _compile_axis(n, a) for n, a in spec.axes.items()}
        )
        if not self.axes:
            raise _Invalid("axes: the bank defines no axes")
        if not spec.templates:
            raise _Invalid("templates: the bank defines no templates")
        duplicate = _first_duplicate([template.id for template in spec.templates])
        if duplicate is not None:
            raise _Invalid(f"templates: duplicate template id '{duplicate}'")
        for template in spec.templates:
            _check_weight(f"templates.{template.id}", template.weight)
        self.templates = tuple(Template(t.id, t.text, t.weight) for t in spec.templates)
        self._templates = tuple(_compile_template(t, self.axes) for t in spec.templates)
        axes = tuple(self.axes.values())
        rules: list[list[_Rule]] = [[] for _ in axes]
        for index, constraint in enumerate(spec.constraints):
            for rule in _compile_constraint(index, constraint, axes):
                rules[rule.axis].append(rule)
        _check_reachable(
            axes, rules, [f"constraints[{i}] {_describe(c)}" for i, c in enumerate(spec.constraints)]
        )
        samplers = []
        self._width = 1  # uniforms per sample: the template's, then each axis's
        for axis, axis_rules in zip(axes, rules, strict=True):
            samplers.append(_AxisSampler(axis, axis_rules, self._width))
            self._width += samplers[-1].width
        self._samplers = tuple(samplers)
        self._template_weights = _cumulative([t.weight for t in self.templates])
        content = json.dumps(
            spec.model_dump(mode="json", by_alias=True), ensure_ascii=False, separators=(",", ":")
        )
        self._digest = digest(content)

    @classmethod
    def load(cls, path: str | Path) -> PromptBank:
        """Read and validate a bank; every problem is a one-line `PromptBankError` naming the entry."""
        spec = load_model(path, _BankSpec, PromptBankError, "prompt bank")
        try:
            return cls(str(path), spec)
        except _Invalid as exc:
            raise PromptBankError(f"{path}: {exc}") from None

    def digest(self) -> str:
        """Hash of the validated content: layout and comments of the file do not change it."""
        return self._digest

    def sample(self, rng: np.random.Generator) -> PromptSample:
        """One sample; it takes the same number of draws from `rng` whatever it picks."""
        return self._render(rng.random(self._width).tolist())

    def sample_many(self, n: int, seed: int) -> list[PromptSample]:
        """`n` samples from `default_rng(seed)`: the same as `n` calls of `sample` on that generator."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        rng = np.random.default_rng(seed)
        samples: list[PromptSample] = []
        while len(samples) < n:
            rows = rng.random((min(_CHUNK, n - len(samples)), self._width)).tolist()
            samples.extend(map(self._render, rows))
        return samples

    def _render(self, u: Sequence[float]) -> PromptSample:
        """One sample from its row of uniforms: one for the template, then `width` per axis."""
        template = self._templates[_draw(self._template_weights, u[0])]
        chosen = [0] * len(self._samplers)
        attributes: dict[str, str | list[str]] = {}
        words: dict[str, str] = {}
        whole = True
        for k, sampler in enumerate(self._samplers):
            at = sampler.at
            if sampler.single:
                values, bits, cumulative = sampler.fixed or sampler.table(sampler.excluded(chosen))
                j = _draw(cumulative, u[at])
                phrases = values[j].phrases
                chosen[k] = bits[j]
                attributes[sampler.name] = values[j].id
                words[sampler.name] = phrases[int(u[at + 1] * len(phrases))]
            else:
                chosen[k], attributes[sampler.name], words[sampler.name] = sampler.draw_list(
                    sampler.excluded(chosen), u
                )
                whole = whole and bool(words[sampler.name])
        attributes[_TEMPLATE_KEY] = template.id
        if whole and template.tidy:
            text = _fix_articles(template.text.format_map(words))
        else:
            text = _clean(
                "".join(
                    segment.text.format_map(words)
                    for segment in template.segments
                    if not segment.optional or all(words[name] for name in segment.axes)
                )
            )
        return PromptSample(text, self.negative, attributes)
