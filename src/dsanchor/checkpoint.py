"""Save and load a config-driven ``nn.Module`` as safetensors + JSON config (loading never unpickles).

Used by the alignment heads, the controller and the hallucination detector through
:class:`PretrainedMixin`; each names its two files and the command that writes them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from safetensors.torch import load_file, save_file

from dsanchor.config import config_from_dict, config_to_dict
from dsanchor.errors import DataError
from dsanchor.files import write_json

__all__ = ["PretrainedMixin"]


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for a module built as ``cls(config)``."""

    config_class: ClassVar[type]  # the dataclass the module is built from
    config_name: ClassVar[str]  # JSON config file name
    weights_name: ClassVar[str]  # safetensors file name
    display_name: ClassVar[str]  # what it is called in errors, e.g. "controller"
    made_by: ClassVar[str]  # what a user runs to make one, for the error message

    def save_pretrained(self, path: str | Path) -> Path:
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(tensors, str(out / self.weights_name))
        write_json(out / self.config_name, config_to_dict(self.config))
        return out

    @classmethod
    def from_pretrained(cls, path: str | Path):
        p = Path(path)
        if not (p / cls.config_name).is_file() or not (p / cls.weights_name).is_file():
            raise DataError(p, f"not a saved {cls.display_name}: expected {cls.config_name} and {cls.weights_name} "
                               f"(make one with `{cls.made_by}`)")
        where = str(p / cls.config_name)
        model = cls(config_from_dict(cls.config_class, json.loads((p / cls.config_name).read_text()), where=where))
        model.load_state_dict(load_file(str(p / cls.weights_name)))
        return model.eval()
