"""What the command line prints: dsanchor's own lines, and other libraries only when they warn.

By default (:func:`setup_logging` with ``verbose=False``) the CLI shows dsanchor's INFO lines and
progress bars, and only warnings and errors of other libraries: no faiss loader lines, no
sentence-transformers or transformers INFO lines, no Hugging Face "Loading weights" or download bars.
``dsanchor -v`` shows all of it, and dsanchor's DEBUG lines too.

Called by :func:`dsanchor.cli.main` before a command's module is imported (faiss logs while it is
imported); the library itself never configures logging.
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["setup_logging", "THIRD_PARTY_LOGGERS"]

# loggers of libraries that print INFO lines (or more) while dsanchor runs; quiet below WARNING by default
THIRD_PARTY_LOGGERS: tuple[str, ...] = (
    "faiss", "sentence_transformers", "transformers", "huggingface_hub", "timm", "open_clip", "torch",
    "optuna", "stable_baselines3", "PIL", "matplotlib", "urllib3", "httpx", "filelock", "accelerate",
)
_OWN = ("dsanchor", "__main__")  # top-level logger names whose INFO lines stay
_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
# read by huggingface_hub when imported, and through it by transformers ("Loading weights" bars)
_QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1"}
_QUIETED: set[str] = set()  # what an earlier quiet call in this process switched off (for a later -v call)


class _OwnInfoOnly(logging.Filter):
    """Pass dsanchor's records at any level and other libraries' at WARNING and above."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.split(".")[0] in _OWN


def setup_logging(verbose: bool = False) -> None:
    """Configure the root logger for a CLI run; quiet third-party output unless ``verbose``."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=_FORMAT)
    root = logging.getLogger()
    for handler in root.handlers:
        for f in [f for f in handler.filters if isinstance(f, _OwnInfoOnly)]:
            handler.removeFilter(f)
        if not verbose:
            handler.addFilter(_OwnInfoOnly())
    level = logging.NOTSET if verbose else logging.WARNING
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    _hf_progress_bars(enabled=verbose)


def _hf_progress_bars(enabled: bool) -> None:
    """Hugging Face progress bars on or off, before or after huggingface_hub / transformers are imported.

    Off: the environment variables of ``_QUIET_ENV`` (unless the user set them) and the libraries' switches.
    On: undoes only what an earlier quiet call in this process did.
    """
    if enabled and not _QUIETED:
        return
    for key, value in _QUIET_ENV.items():
        if enabled and key in _QUIETED:
            del os.environ[key]
        elif not enabled and key not in os.environ:
            os.environ[key] = value
            _QUIETED.add(key)
    _QUIETED.add("bars")
    hub = sys.modules.get("huggingface_hub.utils")
    if hub is not None and not (enabled and os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")):
        (hub.enable_progress_bars if enabled else hub.disable_progress_bars)()
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is not None:
        (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    if enabled:
        _QUIETED.clear()
