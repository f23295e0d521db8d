"""The whole DSA pipeline on the embedded default: synthetic CLEVR-style data, then ``dsanchor run`` on it.

    data/       synthetic CLEVR-style scenes (COCO + CLEVR formats), made here
    ...         every other stage and the report: see :mod:`dsanchor.run`

``--data-seed N`` generates a fresh benchmark; a rerun reuses the stages that already finished.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dsanchor.run import RunConfig

__all__ = ["DemoConfig", "run_demo"]


@dataclass
class DemoConfig(RunConfig):
    """The synthetic data of the demo; the budget of the run is :class:`~dsanchor.run.RunConfig`'s."""

    scenes: int = field(default=1000, metadata={"help": "synthetic scenes (split 60/20/20)"})
    data_seed: int = field(default=0, metadata={"help": "seed of the synthetic scenes (another: a fresh benchmark)"})
    image_size: int = field(default=224, metadata={"help": "synthetic image size in pixels"})
    color_space: str = field(default="linear", metadata={
        "help": "the renderer's colour pipeline: linear (CLEVR's) or display (the generator's first version)"})


def run_demo(out_dir: str | Path, config: DemoConfig) -> dict:
    """Generate the synthetic data, then :func:`dsanchor.run.run_pipeline` on it. Returns the merged results."""
    from dsanchor.run import Stages, quiet_progress, run_pipeline
    from dsanchor.stages import synth_stage

    quiet_progress()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(out, 2 + 6 * config.seeds)
    data_key = {"scenes": config.scenes, "image_size": config.image_size, "seed": config.data_seed, "facts": 1,
                "color_space": config.color_space}
    stages.run("synth data", out / "data", data_key, lambda d: synth_stage(d, config), "synth")
    return run_pipeline(out / "data", "synth", out, config, stages=stages, data_key=data_key, dataset="synth")
