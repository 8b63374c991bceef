"""User-facing error types: one per kind of bad input, each message naming the file/field/value.

The CLI turns any `PolypSynthError` into a single line and a non-zero exit code; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


UNION_TAG_PREFIX = "kind:"
"""Tags of discriminated config sections (`Tag("kind:transplant")`) start with this. Pydantic puts the
tag in an error's path, where the user never wrote it, so the summary leaves it out."""


def validation_summary(error: ValidationError) -> str:
    """The first problem of a pydantic validation error as `field.path[i]: message (got value)`, one line."""
    first = error.errors()[0]
    path = [part for part in first["loc"] if not (isinstance(part, str) and part.startswith(UNION_TAG_PREFIX))]
    field = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path).lstrip(".")
    field = field or "(top level)"
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = f"unknown key '{first['loc'][-1]}'"
    elif "input" in first and not isinstance(first["input"], dict):
        message += f" (got {first['input']!r})"
    more = len(error.errors()) - 1
    return f"{field}: {message}" + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


class PolypSynthError(Exception):
    """Base class for errors caused by the user's input or environment, not by a bug."""


class ConfigError(PolypSynthError):
    """A job config or `--set` override is invalid."""


class PromptBankError(PolypSynthError):
    """The clinical-descriptor template bank is invalid."""


class MaskPresetError(PolypSynthError):
    """A mask preset is invalid, or a reference mask folder cannot be fitted."""


class FrameCatalogError(PolypSynthError):
    """The source frames cannot be listed, or none of them is usable."""


class ModelLoadError(PolypSynthError):
    """The inpainting model cannot be found, is not an inpainting pipeline, or cannot be built there."""


class ShardError(PolypSynthError):
    """A shard or run directory is missing, unreadable or does not match its plan."""


class ExecutorError(PolypSynthError):
    """Distributed execution failed: a wait timed out, workers died, shards kept failing."""


class BackboneError(PolypSynthError):
    """Pretrained image-network weights are missing or do not fit the architecture."""


class GateError(PolypSynthError):
    """A reference, a feature extractor or a gate result is missing, invalid or does not match."""


class ExportError(PolypSynthError):
    """An export cannot be made: a run was never gated or failed its gate, ids clash, the target is not an export."""


class DataError(PolypSynthError):
    """A training/evaluation data set (images/ + masks/ folder, split file, export, shards) is missing or invalid."""


class TrainError(PolypSynthError):
    """A training setting, encoder or checkpoint is invalid or missing."""


class DonorError(PolypSynthError):
    """A donor library (real lesions for the transplant engine) cannot be built or read."""
