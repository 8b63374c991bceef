"""User-facing error types: one per kind of bad input, each message naming the file/field/value.

The CLI turns any `PolypSynthError` into a single line and a non-zero exit code; anything else is a
bug and keeps its traceback.
"""


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
    """The inpainting model cannot be found or is not an inpainting pipeline."""


class ShardError(PolypSynthError):
    """A shard or run directory is missing, unreadable or does not match its plan."""


class ExecutorError(PolypSynthError):
    """Distributed execution failed: a wait timed out, workers died, shards kept failing."""
