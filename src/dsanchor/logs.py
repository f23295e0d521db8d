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
import warnings

__all__ = ["setup_logging", "THIRD_PARTY_LOGGERS"]

# loggers of libraries that print INFO lines (or more) while dsanchor runs; quiet below WARNING by default
THIRD_PARTY_LOGGERS: tuple[str, ...] = (
    "faiss", "sentence_transformers", "transformers", "huggingface_hub", "timm", "open_clip", "torch",
    "optuna", "stable_baselines3", "PIL", "matplotlib", "urllib3", "httpx", "filelock", "accelerate",
)
_OWN = ("dsanchor", "__main__")  # top-level logger names whose INFO lines stay
_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
_HF_BARS_ENV = "HF_HUB_DISABLE_PROGRESS_BARS"
_SET_BY_US: set[str] = set()  # environment variables a quiet call in this process set (a later -v call unsets them)


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
    """Hugging Face's progress bars ("Loading weights", downloads) on or off.

    Off: sets ``HF_HUB_DISABLE_PROGRESS_BARS`` (read when huggingface_hub is imported, and through it by
    transformers) unless the user set it, and switches the bars off in those libraries if already imported.
    On: undoes what an earlier quiet call in this process did (huggingface_hub's own bars stay off once it
    was imported with the variable set).
    """
    hub = sys.modules.get("huggingface_hub.utils")
    hf_logging = sys.modules.get("transformers.utils.logging")
    if not enabled:
        if _HF_BARS_ENV not in os.environ:
            os.environ[_HF_BARS_ENV] = "1"
            _SET_BY_US.add(_HF_BARS_ENV)
        if hub is not None:
            hub.disable_progress_bars()
        if hf_logging is not None:
            hf_logging.disable_progress_bar()
    elif _HF_BARS_ENV in _SET_BY_US:
        del os.environ[_HF_BARS_ENV]
        _SET_BY_US.discard(_HF_BARS_ENV)
        if hf_logging is not None:
            with warnings.catch_warnings():  # huggingface_hub warns when its own bars cannot come back
                warnings.simplefilter("ignore")
                hf_logging.enable_progress_bar()
