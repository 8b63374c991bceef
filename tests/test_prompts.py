"""Tests of the prompt bank: the default bank, deterministic weighted sampling, and bad banks."""

from __future__ import annotations

import copy
import json
import math
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from pipeline.errors import PromptBankError
from pipeline.plan.prompts.bank import PromptBank
from pipeline.plan.prompts.schema import PromptSample

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BANK = ROOT / "prompts" / "clinical.yaml"


@pytest.fixture(scope="module")
def bank() -> PromptBank:
    return PromptBank.load(DEFAULT_BANK)


@pytest.fixture(scope="module")
def samples(bank: PromptBank) -> list[PromptSample]:
    return bank.sample_many(20_000, 11)


# ---------------------------------------------------------------------------- the default bank


def test_default_bank_has_the_required_axes_ids_and_weights(bank: PromptBank) -> None:
    assert list(bank.axes) == [
        "size",  # first: a plan aimed at lesion sizes decides it (`plan.targets`)
        "morphology",
        "modality",
        "nice",
        "surface",
        "colour",
        "location",
        "modifiers",
    ]
    weights = {name: {v.id: v.weight for v in axis.values} for name, axis in bank.axes.items()}
    assert weights["morphology"] == {
        "0-Ip": 0.143,  # never diminutive (a constraint), so 10 % of all polyps
        "0-Isp": 0.15,
        "0-Is": 0.40,
        "0-IIa": 0.25,
        "0-IIb": 0.05,
        "0-IIc": 0.05,
    }
    assert weights["size"] == {"diminutive": 0.271, "small": 0.364, "large": 0.262, "giant": 0.103}
    assert bank.shares("morphology")["0-Ip"] == pytest.approx(0.10, abs=0.01)
    assert bank.axes["nice"].ids() == ("nice-1", "nice-2", "nice-3")
    assert bank.axes["modality"].ids() == ("wli", "nbi")
    assert bank.axes["modifiers"].pick == (0, 2)
    assert len(bank.templates) >= 4
    assert bank.negative.strip()


def test_attributes_have_the_same_keys_in_every_sample(bank: PromptBank, samples: list[PromptSample]) -> None:
    keys = [*bank.axes, "template"]
    assert all(list(sample.attributes) == keys for sample in samples)
    assert all(isinstance(s.attributes["modifiers"], list) for s in samples)
    assert all(isinstance(s.attributes["size"], str) for s in samples)
    assert {s.attributes["template"] for s in samples} == {t.id for t in bank.templates}


def test_to_json_round_trips_through_json(samples: list[PromptSample]) -> None:
    for sample in samples[:200]:
        data = sample.to_json()
        assert set(data) == {"prompt", "negative_prompt", "attributes"}
        assert json.loads(json.dumps(data)) == data
        assert PromptSample(data["prompt"], data["negative_prompt"], data["attributes"]) == sample


# ---------------------------------------------------------------------------- determinism


def test_same_seed_same_samples_other_seed_other_samples(bank: PromptBank) -> None:
    assert bank.sample_many(300, 5) == bank.sample_many(300, 5)
    assert bank.sample_many(300, 5) != bank.sample_many(300, 6)
    assert bank.sample_many(0, 5) == []


def test_sample_many_equals_repeated_sample_across_chunks(bank: PromptBank) -> None:
    rng = np.random.default_rng(3)
    assert bank.sample_many(5000, 3) == [bank.sample(rng) for _ in range(5000)]


def test_samples_are_identical_in_another_process(bank: PromptBank) -> None:
    code = (
        f"import json; from pipeline.plan.prompts.bank import PromptBank; b = PromptBank.load({str(DEFAULT_BANK)!r}); "
        "print(json.dumps([s.to_json() for s in b.sample_many(300, 9)]))"
    )
    other = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(other.stdout) == [s.to_json() for s in bank.sample_many(300, 9)]


def test_digest_follows_content_not_layout(tmp_path: Path) -> None:
    text = DEFAULT_BANK.read_text()
    relaid = tmp_path / "relaid.yaml"
    relaid.write_text("# another comment\n" + text.replace("weight: 0.40,", "weight:   0.40 ,"))
    changed = tmp_path / "changed.yaml"
    changed.write_text(text.replace("weight: 0.40,", "weight: 0.41,"))
    digest = PromptBank.load(DEFAULT_BANK).digest()
    assert re.fullmatch(r"[0-9a-f]{16}", digest)
    assert PromptBank.load(relaid).digest() == digest
    assert PromptBank.load(changed).digest() != digest


# ---------------------------------------------------------------------------- distribution and constraints


def _holds(constraint: dict[str, Any], attributes: dict[str, Any]) -> bool:
    """Independent reading of one constraint of the YAML file against one sample's attributes."""

    def ids(axis: str) -> set[str]:
        value = attributes[axis]
        return set(value) if isinstance(value, list) else {value}

    if not all(ids(axis) & set(listed) for axis, listed in constraint["if"].items()):
        return True
    if "then_not" in constraint:
        return not any(ids(axis) & set(listed) for axis, listed in constraint["then_not"].items())
    return all(ids(axis) <= set(listed) for axis, listed in constraint["then_only"].items())


def test_every_constraint_of_the_default_bank_is_honoured(samples: list[PromptSample]) -> None:
    constraints = yaml.safe_load(DEFAULT_BANK.read_text())["constraints"]
    assert len(constraints) >= 2
    for index, constraint in enumerate(constraints):
        broken = [s.attributes for s in samples if not _holds(constraint, s.attributes)]
        assert not broken, f"constraints[{index}] broken by {broken[0]}"
    pedunculated = Counter(s.attributes["size"] for s in samples if s.attributes["morphology"] == "0-Ip")
    assert sum(pedunculated.values()) > 1000 and pedunculated["diminutive"] == 0
    assert {s.attributes["nice"] for s in samples} == {"nice-1", "nice-2", "nice-3"}


def _assert_frequencies(counts: Counter[str], expected: dict[str, float]) -> None:
    """Each observed share is within 4.5 standard errors of its expected probability."""
    n = sum(counts.values())
    total = sum(expected.values())
    for value, weight in expected.items():
        p = weight / total
        assert abs(counts[value] / n - p) < 4.5 * math.sqrt(p * (1 - p) / n), (value, counts[value] / n, p)


def test_unconstrained_axes_follow_their_weights(bank: PromptBank, samples: list[PromptSample]) -> None:
    for axis in ("location", "size", "modality"):
        expected = {v.id: v.weight for v in bank.axes[axis].values}
        _assert_frequencies(Counter(s.attributes[axis] for s in samples), expected)
    _assert_frequencies(
        Counter(s.attributes["template"] for s in samples), {t.id: t.weight for t in bank.templates}
    )


def test_excluded_values_leave_the_rest_renormalised(samples: list[PromptSample]) -> None:
    shapes = Counter(s.attributes["morphology"] for s in samples if s.attributes["size"] == "diminutive")
    _assert_frequencies(shapes, {"0-Isp": 0.15, "0-Is": 0.40, "0-IIa": 0.25, "0-IIb": 0.05, "0-IIc": 0.05})


def test_multi_pick_axis_gives_zero_to_two_distinct_values_in_bank_order(
    bank: PromptBank, samples: list[PromptSample]
) -> None:
    order = bank.axes["modifiers"].ids()
    picks = [s.attributes["modifiers"] for s in samples]
    assert {len(p) for p in picks} == {0, 1, 2}
    assert all(list(p) == sorted(set(p), key=order.index) for p in picks)


# ---------------------------------------------------------------------------- text


_MESS = re.compile(r"\s\s|\s[,;:]|[,;:]\s*[,;:]|^[\s,;:]|[\s,;:]$|\ba [aeio]|\[|\]|\{|\}")


def test_prompt_text_is_clean_with_and_without_modifiers(samples: list[PromptSample]) -> None:
    assert not [s.text for s in samples if _MESS.search(s.text)][:3]
    empty = [s.text for s in samples if not s.attributes["modifiers"]]
    assert empty and not [t for t in empty if re.search(r"\b(with|in view|visible)$", t)][:3]
    assert any(" an irregular " in s.text for s in samples)


def test_prompt_text_carries_the_drawn_values(bank: PromptBank, samples: list[PromptSample]) -> None:
    for sample in samples[:2000]:
        for name, axis in bank.axes.items():
            drawn = sample.attributes[name]
            for value in axis.values:
                if value.id in (drawn if isinstance(drawn, list) else [drawn]):
                    assert any(phrase in sample.text for phrase in value.phrases), (
                        name,
                        value.id,
                        sample.text,
                    )


def test_template_with_list_axis_outside_brackets_is_tidied(tmp_path: Path) -> None:
    data = _minimal()
    data["templates"] = [{"id": "t", "text": "a {size}  polyp , {modifiers}, {size} again"}]
    texts = {s.text for s in _load(tmp_path, data).sample_many(200, 0)}
    assert "a small polyp, small again" in texts
    assert not [t for t in texts if _MESS.search(t)]


# ---------------------------------------------------------------------------- bad banks


def _minimal() -> dict[str, Any]:
    return {
        "negative": "blurry",
        "axes": {
            "morphology": {
                "values": [
                    {"id": "0-Ip", "weight": 1, "phrases": ["pedunculated"]},
                    {"id": "0-Is", "weight": 2, "phrases": ["sessile", "flat sessile"]},
                ]
            },
            "size": {
                "values": [
                    {"id": "small", "weight": 1, "phrases": ["small"]},
                    {"id": "large", "weight": 1, "phrases": ["large"]},
                ]
            },
            "modifiers": {
                "pick": {"min": 0, "max": 2},
                "values": [
                    {"id": "mucus", "weight": 1, "phrases": ["mucus"]},
                    {"id": "bubbles", "weight": 1, "phrases": ["bubbles"]},
                ],
            },
        },
        "templates": [{"id": "t", "text": "a {size} {morphology} polyp[ with {modifiers}]"}],
        "constraints": [{"if": {"morphology": ["0-Ip"]}, "then_not": {"size": ["small"]}}],
    }


def _load(tmp_path: Path, data: dict[str, Any]) -> PromptBank:
    path = tmp_path / "bank.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return PromptBank.load(path)


def test_minimal_bank_loads_and_samples(tmp_path: Path) -> None:
    samples = _load(tmp_path, _minimal()).sample_many(300, 0)
    assert {s.attributes["size"] for s in samples if s.attributes["morphology"] == "0-Ip"} == {"large"}
    assert {s.text for s in samples} >= {
        "a large pedunculated polyp",
        "a small sessile polyp with mucus and bubbles",
    }


def _set(path: str, value: Any) -> Any:
    """A change to the minimal bank: `path` is dotted, with list indices as numbers."""

    def change(data: dict[str, Any]) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node: Any = data
        for part in parents:
            node = node[part]
        node[last] = value

    return change


BAD_BANKS = [
    (_set("templates.0.text", "a {shape} polyp"), ["templates.t", "{shape}"]),
    (_set("templates.0.text", "a {size polyp"), ["templates.t", "placeholder"]),
    (_set("templates.0.text", "a [{size} polyp"), ["templates.t", "[ ]"]),
    (_set("templates", []), ["templates", "no templates"]),
    (_set("templates.0.text", "a {size!r} polyp"), ["templates.t", "{size}", "format spec"]),
    (_set("axes.size.values.0.phrases", ["small", " , "]), ["axes.size.small", "phrase is empty"]),
    (_set("templates", [{"id": "t", "text": "{size}"}] * 2), ["duplicate template id 't'"]),
    (_set("templates.0.weight", 0), ["templates.t", "weight"]),
    (_set("axes.size.values", []), ["axes.size", "no values"]),
    (_set("axes", {}), ["axes", "no axes"]),
    (_set("axes.size.values.1.weight", 0), ["axes.size.large", "weight", "0"]),
    (_set("axes.size.values.1.weight", -2.5), ["axes.size.large", "-2.5"]),
    (_set("axes.size.values.1.weight", float("nan")), ["axes.size.large", "nan"]),
    (_set("axes.size.values.1.id", "small"), ["axes.size", "duplicate value id 'small'"]),
    (_set("axes.size.values.1.phrases", []), ["axes.size.values[1].phrases"]),
    (
        _set("axes.size.values.1.colour_hint", "red"),
        ["axes.size.values[1].colour_hint", "unknown key 'colour_hint'"],
    ),
    (_set("axes.size.shape", "round"), ["axes.size.shape", "unknown key 'shape'"]),
    (_set("extra", 1), ["unknown key 'extra'"]),
    (
        _set("axes.template", {"values": [{"id": "x", "weight": 1, "phrases": ["x"]}]}),
        ["axes.template", "axis name"],
    ),
    (_set("axes.modifiers.pick", {"min": 2, "max": 1}), ["axes.modifiers.pick", "min <= max"]),
    (_set("axes.modifiers.pick", {"min": 0, "max": 3}), ["axes.modifiers.pick"]),
    (
        _set("constraints.0.then_also", {"size": ["large"]}),
        ["constraints[0].then_also", "unknown key 'then_also'"],
    ),
    (_set("constraints.0.if", {"shape": ["round"]}), ["constraints[0]", "unknown axis 'shape'"]),
    (_set("constraints.0.then_not", {"shape": ["round"]}), ["constraints[0]", "unknown axis 'shape'"]),
    (
        _set("constraints.0.then_not", {"size": ["tiny"]}),
        ["constraints[0]", "axis 'size' has no value 'tiny'"],
    ),
    (_set("constraints.0.if", {"morphology": ["0-IIx"]}), ["constraints[0]", "no value '0-IIx'"]),
    (
        _set("constraints.0.then_only", {"size": ["large"]}),
        ["constraints[0]", "exactly one of then_not and then_only"],
    ),
    (
        _set("constraints.0.then_not", {"morphology": ["0-Is"]}),
        ["constraints[0]", "axis 'morphology' is both"],
    ),
    (
        _set("constraints.0.then_not", {"size": ["small", "large"]}),
        ["constraints[0]", "leaves axis 'size'", "morphology=0-Ip"],
    ),
    (
        _set("constraints.1", {"if": {"size": ["large"]}, "then_only": {"modifiers": []}}),
        ["constraints[1].then_only.modifiers", "at least 1"],
    ),
]


@pytest.mark.parametrize("change, expected", BAD_BANKS)
def test_bad_bank_is_rejected_naming_file_and_entry(tmp_path: Path, change: Any, expected: list[str]) -> None:
    data = copy.deepcopy(_minimal())
    data["constraints"].append({"if": {"size": ["large"]}, "then_not": {"modifiers": ["mucus"]}})
    change(data)
    with pytest.raises(PromptBankError) as raised:
        _load(tmp_path, data)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(str(tmp_path / "bank.yaml"))
    for fragment in expected:
        assert fragment in message


def test_constraints_that_together_empty_an_axis_are_both_named(tmp_path: Path) -> None:
    data = _minimal()
    data["constraints"].append({"if": {"morphology": ["0-Ip"]}, "then_only": {"size": ["small"]}})
    with pytest.raises(PromptBankError, match=r"constraints\[0\].*; constraints\[1\].* leave axis 'size'"):
        _load(tmp_path, data)


def test_list_axis_below_its_minimum_is_rejected(tmp_path: Path) -> None:
    data = _minimal()
    data["axes"]["modifiers"]["pick"] = {"min": 1, "max": 2}
    data["constraints"].append({"if": {"size": ["large"]}, "then_not": {"modifiers": ["mucus", "bubbles"]}})
    with pytest.raises(
        PromptBankError, match=r"constraints\[1\] .* leaves axis 'modifiers' .* when size=large"
    ):
        _load(tmp_path, data)


def test_a_dead_end_that_cannot_be_reached_is_accepted(tmp_path: Path) -> None:
    data = _minimal()
    data["axes"]["morphology"]["values"] = data["axes"]["morphology"]["values"][:1]  # only 0-Ip
    data["constraints"].append({"if": {"size": ["small"]}, "then_not": {"modifiers": ["mucus", "bubbles"]}})
    data["axes"]["modifiers"]["pick"] = {"min": 1, "max": 1}
    # size=small would leave no modifier, but 0-Ip (the only morphology) already excludes small.
    samples = _load(tmp_path, data).sample_many(100, 0)
    assert {s.attributes["size"] for s in samples} == {"large"}


@pytest.mark.parametrize(
    "text, expected",
    [
        (None, "no such prompt bank file"),
        ("axes: [unclosed", "not valid YAML"),
        ("negative: a\nnegative: b\n", "duplicate key 'negative'"),
        ("- a list\n", "expected a mapping"),
    ],
)
def test_unreadable_bank_file_is_rejected(tmp_path: Path, text: str | None, expected: str) -> None:
    path = tmp_path / "bank.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(PromptBankError, match=re.escape(str(path)) + ".*" + re.escape(expected)):
        PromptBank.load(path)
