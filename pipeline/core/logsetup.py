"""Process set-up, done explicitly by whoever owns the process (the CLI, a Ray worker), never on import.

`configure(verbose)` sets up logging once: a rich handler on a terminal, timestamped lines in job logs
(`ray job logs`, cron mail), third-party chatter at WARNING, and the filters that keep diffusers and
transformers from repeating the same warning for every batch.
"""

from __future__ import annotations

import logging
import sys
import warnings

_NOISY = ("urllib3", "botocore", "s3fs", "fsspec", "PIL", "filelock", "httpx")
_TRUNCATION = ("can only handle sequences up to", "Token indices sequence length")


class _DropVaeCastWarning(logging.Filter):
    """diffusers warns about `.to(dtype)` on models with fp32 modules, and its own SDXL pipeline makes
    that call on the VAE during every generation: a warning per batch that says nothing to our users."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32" not in record.getMessage()


class _TruncationWarningOnce(logging.Filter):
    """The pipeline warns on every batch whose prompt exceeds CLIP's 77 tokens; once per process says it
    (the default bank stays under 77 real CLIP tokens; the tiny test tokenizer counts characters)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not any(text in record.getMessage() for text in _TRUNCATION):
            return True
        first, self.seen = not self.seen, True
        if first:
            record.msg = "prompt longer than the text encoder's window: it is truncated (logged once per process)"
            record.args = ()
        return first


def quiet_model_libraries() -> None:
    """Filters for diffusers/transformers logs; idempotent (installed once per process)."""
    import diffusers
    import transformers

    vae_logger = logging.getLogger("diffusers.models.modeling_utils")
    if any(isinstance(f, _DropVaeCastWarning) for f in vae_logger.filters):
        return
    vae_logger.addFilter(_DropVaeCastWarning())
    # "Loading pipeline components / weights" bars, once per worker: noise in job logs
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    # `torch_dtype` works on every diffusers we support; its rename to `dtype` is only in recent releases.
    warnings.filterwarnings("ignore", message="`torch_dtype` is deprecated", category=FutureWarning)
    once = _TruncationWarningOnce()
    for name in ("diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_inpaint",
                 "transformers.tokenization_utils_base"):
        logging.getLogger(name).addFilter(once)


def configure(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(show_path=False)])
    else:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
