"""The prompt bank's file format (pydantic, unknown keys refused) and the values a bank is made of."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

AXIS_NAME = re.compile(r"[a-z][a-z0-9_]*")
TEMPLATE_KEY = "template"  # attribute key of the template id; no axis may take this name

# ---------------------------------------------------------------------------- file schema


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_Text = Annotated[str, Field(min_length=1)]
_Ids = Annotated[list[_Text], Field(min_length=1)]


class ValueSpec(Strict):
    id: _Text
    weight: float
    phrases: Annotated[list[_Text], Field(min_length=1)]


class PickSpec(Strict):
    min: int = Field(0, ge=0)
    max: int = Field(ge=1)


class AxisSpec(Strict):
    values: list[ValueSpec]
    pick: PickSpec | None = None


class TemplateSpec(Strict):
    id: _Text
    text: _Text
    weight: float = 1.0


class ConstraintSpec(Strict):
    when: Annotated[dict[str, _Ids], Field(alias="if", min_length=1)]
    then_not: dict[str, _Ids] | None = None
    then_only: dict[str, _Ids] | None = None
    reason: str | None = None


class BankSpec(Strict):
    negative: str
    axes: dict[str, AxisSpec]
    templates: list[TemplateSpec]
    constraints: list[ConstraintSpec] = []


class InvalidBank(Exception):
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


