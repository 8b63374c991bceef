"""YAML files into typed objects, with one-line errors: the one way configs, presets and banks load.

A key written twice is an error (plain YAML keeps the last one silently), the top level must be a
mapping, and every problem names the file and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.core import storage
from pipeline.errors import PolypSynthError, validation_summary

M = TypeVar("M", bound=BaseModel)


class _NoDuplicateKeysLoader(yaml.SafeLoader):
    """Safe YAML loading that rejects a key written twice instead of keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            key = str(self.construct_object(key_node, deep=deep))
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_mapping(path: str | Path, error: type[PolypSynthError], what: str) -> dict[str, Any]:
    """The top-level mapping of a YAML file; `what` names the file's kind in messages ("job config")."""
    path = Path(path)
    text = storage.read_text(str(path), error, what)
    try:
        data = yaml.load(text, Loader=_NoDuplicateKeysLoader)
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a mapping of {what} fields at the top level")
    return data


def validate(model: type[M], data: Any, error: type[PolypSynthError], source: str) -> M:
    """`model` validated from `data`; the first problem becomes one line naming `source` and the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(f"{source}: {validation_summary(exc)}") from None


def load_model(path: str | Path, model: type[M], error: type[PolypSynthError], what: str) -> M:
    return validate(model, read_mapping(path, error, what), error, str(path))
