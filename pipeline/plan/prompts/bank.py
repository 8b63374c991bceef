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

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import numpy as np

from pipeline.core.digests import digest
from pipeline.core.yamlio import load_model
from pipeline.errors import PromptBankError
from pipeline.plan.prompts.constraints import (
    Rule,
    check_reachable,
    check_weight,
    compile_axis,
    compile_constraint,
    compile_template,
    describe,
    first_duplicate,
)
from pipeline.plan.prompts.sampler import AxisSampler, cumulative, draw
from pipeline.plan.prompts.schema import (
    TEMPLATE_KEY,
    Axis,
    BankSpec,
    InvalidBank,
    PromptSample,
    Template,
)
from pipeline.plan.prompts.text import clean_text, fix_articles

# ---------------------------------------------------------------------------- the bank


_CHUNK = 4096  # rows of uniforms drawn at once by sample_many: bounds memory, keeps the stream


class PromptBank:
    """A validated template bank, ready to sample; build it with `PromptBank.load`."""

    def __init__(self, path: str, spec: BankSpec) -> None:
        self.path = path
        self.negative = spec.negative
        self.axes: Mapping[str, Axis] = MappingProxyType(
            {n: compile_axis(n, a) for n, a in spec.axes.items()}
        )
        if not self.axes:
            raise InvalidBank("axes: the bank defines no axes")
        if not spec.templates:
            raise InvalidBank("templates: the bank defines no templates")
        duplicate = first_duplicate([template.id for template in spec.templates])
        if duplicate is not None:
            raise InvalidBank(f"templates: duplicate template id '{duplicate}'")
        for template in spec.templates:
            check_weight(f"templates.{template.id}", template.weight)
        self.templates = tuple(Template(t.id, t.text, t.weight) for t in spec.templates)
        self._templates = tuple(compile_template(t, self.axes) for t in spec.templates)
        axes = tuple(self.axes.values())
        rules: list[list[Rule]] = [[] for _ in axes]
        for index, constraint in enumerate(spec.constraints):
            for rule in compile_constraint(index, constraint, axes):
                rules[rule.axis].append(rule)
        check_reachable(
            axes, rules, [f"constraints[{i}] {describe(c)}" for i, c in enumerate(spec.constraints)]
        )
        samplers = []
        self._width = 1  # uniforms per sample: the template's, then each axis's
        for axis, axis_rules in zip(axes, rules, strict=True):
            samplers.append(AxisSampler(axis, axis_rules, self._width))
            self._width += samplers[-1].width
        self._samplers = tuple(samplers)
        self._template_weights = cumulative([t.weight for t in self.templates])
        content = json.dumps(
            spec.model_dump(mode="json", by_alias=True), ensure_ascii=False, separators=(",", ":")
        )
        self._digest = digest(content)

    @classmethod
    def load(cls, path: str | Path) -> PromptBank:
        """Read and validate a bank; every problem is a one-line `PromptBankError` naming the entry."""
        spec = load_model(path, BankSpec, PromptBankError, "prompt bank")
        try:
            return cls(str(path), spec)
        except InvalidBank as exc:
            raise PromptBankError(f"{path}: {exc}") from None

    def digest(self) -> str:
        """Hash of the validated content: layout and comments of the file do not change it."""
        return self._digest

    def shares(self, axis: str, n: int = 20_000, seed: int = 0) -> dict[str, float]:
        """How often each value of `axis` comes out of this bank, constraints included, in the axis's
        own order: what a job's plans will actually hold (e.g. 0-Ip is never diminutive)."""
        if axis not in self.axes:
            raise PromptBankError(f"{self.path}: no axis '{axis}' (axes: {', '.join(self.axes)})")
        drawn = Counter(sample.attributes[axis] for sample in self.sample_many(n, seed))
        return {value: drawn[value] / n for value in self.axes[axis].ids() if drawn[value]}

    def check_given(self, given: Mapping[str, str], source: str) -> dict[str, int]:
        """Values a frame decides, as bit masks, once checked: each must be a value of a single-valued
        axis that no constraint restricts, so it can never contradict what the bank draws before it
        (constraints may still follow from it: NBI makes NICE 2/3 polyps brownish)."""
        masks = {}
        for name, value in given.items():
            if name not in self.axes:
                continue  # the bank does not describe this axis: nothing to agree with
            k = list(self.axes).index(name)
            sampler = self._samplers[k]
            if not sampler.single:
                raise PromptBankError(f"{source}: {name}: a frame can only decide a single-valued axis")
            if value not in sampler.ids:
                raise PromptBankError(f"{source}: {name}={value!r} is not a value of the bank's axis "
                                      f"(values: {', '.join(sampler.ids)})")
            if sampler.restricted:
                raise PromptBankError(f"{self.path}: a constraint restricts axis '{name}', so a frame cannot "
                                      "decide it; reorder the bank's axes so that it comes first")
            masks[name] = 1 << sampler.ids.index(value)
        return masks

    def sample(self, rng: np.random.Generator, given: Mapping[str, str] | None = None) -> PromptSample:
        """One sample; it takes the same number of draws from `rng` whatever it picks."""
        return self._render(rng.random(self._width).tolist(), self.check_given(given or {}, "given"))

    def sample_many(self, n: int, seed: int, given: Sequence[Mapping[str, str]] | None = None,
                    start: int = 0) -> list[PromptSample]:
        """`n` samples from `default_rng(seed)`: the same as `n` calls of `sample` on that generator,
        after `start` samples drawn and dropped (so samples start… of a longer run are these).
        `given[i]` holds the axis values sample i's frame decides (checked with `check_given`)."""
        if n < 0 or start < 0:
            raise ValueError(f"n and start must be >= 0, got {n} and {start}")
        checked: dict[tuple[tuple[str, str], ...], dict[str, int]] = {}  # a plan repeats a few frames' values

        def check(values: Mapping[str, str]) -> dict[str, int]:
            key = tuple(sorted(values.items()))
            if key not in checked:
                checked[key] = self.check_given(values, "given")
            return checked[key]

        masks = [check(values) for values in given] if given is not None else [{}] * n
        rng = np.random.default_rng(seed)
        for skipped in range(0, start, _CHUNK):  # in the same chunks as drawing them: the same stream
            rng.random((min(_CHUNK, start - skipped), self._width))
        samples: list[PromptSample] = []
        while len(samples) < n:
            rows = rng.random((min(_CHUNK, n - len(samples)), self._width)).tolist()
            samples.extend(map(self._render, rows, masks[len(samples):len(samples) + len(rows)]))
        return samples

    def _render(self, u: Sequence[float], given: Mapping[str, int]) -> PromptSample:
        """One sample from its row of uniforms: one for the template, then `width` per axis. A given
        axis keeps its value (its value draw is spent all the same, so the stream does not shift)."""
        template = self._templates[draw(self._template_weights, u[0])]
        chosen = [0] * len(self._samplers)
        attributes: dict[str, str | list[str]] = {}
        words: dict[str, str] = {}
        whole = True
        for k, sampler in enumerate(self._samplers):
            at = sampler.at
            if sampler.single:
                if sampler.name in given:
                    values, bits, cumulative = sampler.table(sampler.full & ~given[sampler.name])
                else:
                    values, bits, cumulative = sampler.fixed or sampler.table(sampler.excluded(chosen))
                j = draw(cumulative, u[at])
                phrases = values[j].phrases
                chosen[k] = bits[j]
                attributes[sampler.name] = values[j].id
                words[sampler.name] = phrases[int(u[at + 1] * len(phrases))]
            else:
                chosen[k], attributes[sampler.name], words[sampler.name] = sampler.draw_list(
                    sampler.excluded(chosen), u
                )
                whole = whole and bool(words[sampler.name])
        attributes[TEMPLATE_KEY] = template.id
        if whole and template.tidy:
            text = fix_articles(template.text.format_map(words))
        else:
            text = clean_text(
                "".join(
                    segment.text.format_map(words)
                    for segment in template.segments
                    if not segment.optional or all(words[name] for name in segment.axes)
                )
            )
        return PromptSample(text, self.negative, attributes)
