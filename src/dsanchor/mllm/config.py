"""Every configuration of the DSA-in-an-MLLM experiment, each default defined once.

* :class:`MLLMConfig`: the model, the data, its split and where the grid caches go (every ``mllm`` command;
  ``mllm build`` reads only its data fields);
* :class:`GridConfig`: the grid of g and the generation settings (images per generate call, tokens);
* :class:`CaptionConfig`: what ``mllm caption`` adds (the split to caption, ``--dsa`` or ``--g``);
* :class:`MLLMTrainConfig`: ``mllm train``'s PPO seeds and tuned reward; the reward itself is
  :class:`~dsanchor.rl.env.RewardConfig` with :data:`MLLM_REWARD_DEFAULTS` (CIDEr-D is on a larger scale than
  recall), PPO and tuning are :class:`~dsanchor.rl.ppo.PPOConfig` and :class:`~dsanchor.rl.tune.TuneConfig` with
  :data:`MLLM_PPO_DEFAULTS` and :data:`MLLM_TUNE_DEFAULTS` (:func:`mllm_reward`, :func:`mllm_ppo`,
  :func:`mllm_tune` build them);
* :class:`MLLMEvalConfig` (``mllm eval``), :class:`AdaptConfig` (``mllm adapt``), :class:`BuildConfig`
  (``mllm build``).

**Split rule** (every command): the dataset's own train/val/test split when it has all three, else a split
file (``--splits``), else a seeded 60/20/20 split (``--split-seed``): :func:`dsanchor.data.splits.assign_splits`,
as ``dsanchor run`` does. So "test" means the same images in ``mllm caption``, ``train``, ``eval`` and the demo.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dsanchor.data import list_formats
from dsanchor.data.questions import QUESTION_FAMILIES
from dsanchor.errors import ConfigError, DataError
from dsanchor.gate import GateConfig
from dsanchor.integrations.families import get_family
from dsanchor.rl.env import RewardConfig
from dsanchor.rl.ppo import PPOConfig
from dsanchor.rl.tune import TuneConfig, read_best

__all__ = ["MLLMConfig", "GridConfig", "CaptionConfig", "MLLMTrainConfig", "MLLMEvalConfig", "AdaptConfig",
           "BuildConfig", "AnswerConfig", "RouterConfig",
           "MLLM_REWARD_DEFAULTS", "MLLM_PPO_DEFAULTS", "MLLM_TUNE_DEFAULTS",
           "CHAIR_VOCABULARY",
           "mllm_reward", "mllm_ppo", "mllm_tune"]

# R = clip(alpha * CIDEr-D + beta * (-hallucinated share)); CIDEr-D is on its raw scale (0 to ~3)
MLLM_REWARD_DEFAULTS = {"alpha": 1.0, "beta": 1.0, "clip_low": -5.0, "clip_high": 5.0}
# the cached rewards are cheap, so fewer PPO steps than `dsanchor train`'s default
MLLM_PPO_DEFAULTS = {"timesteps": 16_384, "checkpoint_every": 4_096}
MLLM_TUNE_DEFAULTS = {"study_name": "dsa-mllm-reward", "timesteps": 4096}
# dataset format -> CHAIR vocabulary (COCO synonyms, or the synth colour + shape names)
CHAIR_VOCABULARY: dict[str, str] = {"coco": "coco", "vg": "coco", "clevr": "synth", "synth": "synth"}


def mllm_reward(**values) -> RewardConfig:
    """The MLLM reward: :data:`MLLM_REWARD_DEFAULTS` with ``values`` on top."""
    return RewardConfig(**{**MLLM_REWARD_DEFAULTS, **values})


def mllm_ppo(**values) -> PPOConfig:
    """PPO for the MLLM commands: :data:`MLLM_PPO_DEFAULTS` with ``values`` on top."""
    return PPOConfig(**{**MLLM_PPO_DEFAULTS, **values})


def mllm_tune(**values) -> TuneConfig:
    """The reward search of ``mllm tune``: :data:`MLLM_TUNE_DEFAULTS` with ``values`` on top."""
    return TuneConfig(**{**MLLM_TUNE_DEFAULTS, **values})


@dataclass
class MLLMConfig:
    """The model, the data and where the grid caches go: shared by every mllm command."""

    model_type: str | None = field(default=None, metadata={"help": "llava, blip2 or idefics"})
    model_path: str | None = field(default=None, metadata={"help": "local directory saved with save_pretrained"})
    data: str | None = field(default=None, metadata={"help": "dataset root (the loader's path)"})
    format: str | None = field(default=None, metadata={"help": "dataset format: coco, vg, clevr or synth"})
    splits: str | None = field(default=None, metadata={"help": "split file (default: the dataset's, else seeded)"})
    split_seed: int = field(default=0, metadata={"help": "seed of the 60/20/20 split when the data has none"})
    limit: int | None = field(default=None, metadata={"help": "use at most this many images of each split"})
    prompt: str | None = field(default=None, metadata={"help": "caption prompt; unset: a default per model type"})
    questions: str | None = field(default=None, metadata={
        "help": "questions file (`dsanchor data questions`): learn and measure on its questions and caption prompts "
                "about each split's images instead of one caption per image"})
    coarse_layer: int = field(default=1, metadata={"help": "vision hidden-state index that gives V_coarse"})
    adapter: str | None = field(default=None, metadata={"help": "seam adapter from `dsanchor mllm adapt`"})
    hall_detector: str | None = field(default=None, metadata={
        "help": "hallucination detector (`dsanchor hallucination train`) for the reward of images without "
                "annotated objects; needs --features"})
    features: str | None = field(default=None, metadata={"help": "feature store of the dataset (for --hall-detector)"})
    cache: str | None = field(default=None, metadata={"help": "grid cache root (default: OUT/grid); one folder "
                                                               "per split, shared by train, tune and eval"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda or auto (under torchrun: cuda:LOCAL_RANK)"})
    dtype: str = field(default="auto", metadata={"help": "auto (the checkpoint's), float32, float16 or bfloat16"})
    out: str | None = field(default=None, metadata={"help": "output directory"})

    def check(self, model: bool = True) -> None:
        """One-line errors for missing or bad values; ``model=False``: the data fields only (``mllm build``)."""
        names = ("model_type", "model_path", "data", "format", "out") if model else ("data", "format", "out")
        for name in names:
            if getattr(self, name) is None:
                raise ConfigError(f"--{name.replace('_', '-')} is required")
        if model:
            get_family(self.model_type)
        if self.format not in list_formats():
            raise ConfigError(f"unknown --format {self.format!r}; valid: {', '.join(list_formats())}")
        if self.limit is not None and self.limit <= 0:
            raise ConfigError(f"--limit must be positive; got {self.limit}")
        if self.questions is not None and not Path(self.questions).is_file():
            raise DataError(self.questions, "questions file not found (write one with `dsanchor data questions`)")
        if (self.hall_detector is None) != (self.features is None):
            raise ConfigError("--hall-detector and --features go together (the detector reads the store's features)")

    @property
    def caption_prompt(self) -> str:
        """``prompt``, or the model type's default caption prompt."""
        return get_family(self.model_type).CAPTION_PROMPT if self.prompt is None else self.prompt

    @property
    def vocabulary(self) -> str:
        """The CHAIR vocabulary of the dataset format."""
        return CHAIR_VOCABULARY.get(self.format, "coco")

    @property
    def image_root(self) -> Path:
        """The folder the samples' image paths are relative to."""
        return Path(self.data) if Path(self.data).is_dir() else Path(self.data).parent

    def cache_dir(self, split: str) -> Path:
        """The grid cache of ``split``: ``CACHE/split``, or ``CACHE/split-items`` with ``--questions``."""
        return Path(self.cache or Path(self.out) / "grid") / (f"{split}-items" if self.questions else split)


@dataclass
class GridConfig:
    """The grid of g the captions are cached at, and the generation settings of every mllm command."""

    grid: int = field(default=6, metadata={"help": "number of g values on the grid (0 to 1, evenly spaced)"})
    chunk_size: int = field(default=16, metadata={"help": "images per cache file (the unit of resume and sharding)"})
    batch_size: int = field(default=8, metadata={"help": "images per generate call"})
    max_new_tokens: int = field(default=30, metadata={"help": "tokens generated per caption"})
    answer_tokens: int = field(default=5, metadata={"help": "tokens generated per short answer (--questions)"})

    def __post_init__(self) -> None:
        if self.grid < 2:
            raise ConfigError(f"--grid must be >= 2 (g = 0 and g = 1 at least); got {self.grid}")
        if min(self.chunk_size, self.batch_size, self.max_new_tokens, self.answer_tokens) < 1:
            raise ConfigError("--chunk-size, --batch-size, --max-new-tokens and --answer-tokens must be >= 1")


@dataclass
class CaptionConfig:
    """What ``mllm caption`` adds: which split, and the g source of its DSA run."""

    split: str = field(default="test", metadata={"help": "split to caption: train, val, test or all"})
    dsa: str | None = field(default=None, metadata={"help": "saved GranularityController directory"})
    g: float | None = field(default=None, metadata={"help": "fixed granularity g in [0, 1] instead of --dsa"})

    def __post_init__(self) -> None:
        if self.split not in ("train", "val", "test", "all"):
            raise ConfigError(f"unknown --split {self.split!r}; valid: train, val, test, all")
        if self.dsa is not None and self.g is not None:
            raise ConfigError("pass either --dsa CTRL or --g FLOAT, not both")
        if self.g is not None and not 0.0 <= self.g <= 1.0:
            raise ConfigError(f"--g must lie in [0, 1]; got {self.g}")


@dataclass
class MLLMTrainConfig:
    """``mllm train``: how many PPO seeds, and where a tuned reward comes from."""

    seeds: int = field(default=1, metadata={"help": "PPO training seeds on the same cache (OUT/seed{k}; mllm eval "
                                                    "measures each and resamples them)"})
    tuned: str | None = field(default=None, metadata={"help": "read alpha, beta and the clip from `mllm tune --out`"})

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ConfigError(f"--seeds must be >= 1; got {self.seeds}")

    def reward(self, reward: RewardConfig) -> RewardConfig:
        """The tuned reward when ``tuned`` is set, else ``reward``."""
        if self.tuned:
            return read_best(self.tuned)
        return reward


@dataclass
class RouterConfig(GateConfig):
    """``router_loss`` (``mllm train --questions``): AVG-LLaVA's supervised router on the answer losses; the
    gradient steps, learning rate, weight decay and seed are :class:`~dsanchor.gate.GateConfig`'s."""

    margin: float = field(default=0.1, metadata={"help": "margin of the ranking loss (on probabilities)"})
    rank_weight: float = field(default=1.0, metadata={"help": "weight of the ranking loss beside the cross-entropy"})
    hidden: int = field(default=64, metadata={"help": "width of each hidden layer"})
    layers: int = field(default=2, metadata={"help": "hidden layers"})

    def __post_init__(self) -> None:
        if self.steps < 1 or self.hidden < 1 or self.layers < 1:
            raise ConfigError("--router-steps, --router-hidden and --router-layers must be >= 1")


@dataclass
class MLLMEvalConfig:
    """``mllm eval``: the controller to measure, POPE, retrieval and the bootstrap."""

    controller: str | None = field(default=None, metadata={"help": "controller from `mllm train --out` (the "
                                                                   "directory or its controller/ folder)"})
    router: str | None = field(default=None, metadata={"help": "router_loss controller (--questions; default: the "
                                                               "router/ folder of --controller's `mllm train --out`)"})
    pope_positives: int = field(default=3, metadata={"help": "POPE: at most this many present objects per image "
                                                             "(as many absent ones per sampling); 0 skips POPE"})
    retrieval: bool = field(default=True, metadata={"help": "R@1 / R@10 with the MLLM's own embeddings"})
    n_boot: int = field(default=2000, metadata={"help": "bootstrap resamples over test images"})
    seed: int = field(default=0, metadata={"help": "seed of POPE's random negatives and of the bootstrap"})


@dataclass
class AdaptConfig:
    """``mllm adapt``: the seam adapter, its training and the CIDEr-at-fixed-g measurement."""

    rank: int = field(default=64, metadata={"help": "bottleneck width of the adapter"})
    steps: int = field(default=300, metadata={"help": "optimizer steps"})
    adapt_batch_size: int = field(default=8, metadata={"help": "captions per step"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (cosine decay)"})
    eval_images: int = field(default=32, metadata={"help": "val images for CIDEr at fixed g before / after (0: skip)"})
    eval_grid: int = field(default=5, metadata={"help": "fixed g values of that measurement (0 to 1)"})
    seed: int = field(default=0, metadata={"help": "seed of the init, the batches and g"})

    def __post_init__(self) -> None:
        if min(self.rank, self.steps, self.adapt_batch_size) < 1:
            raise ConfigError("--rank, --steps and --adapt-batch-size must be >= 1")
        if self.eval_grid < 2 and self.eval_images:
            raise ConfigError("--eval-grid must be >= 2")


@dataclass
class BuildConfig:
    """The small LLaVA, its training stages and their budgets."""

    image_size: int = field(default=128, metadata={"help": "input side of the vision tower in pixels (synth objects "
                                                         "are a few pixels wide at 64)"})
    patch_size: int = field(default=16, metadata={"help": "vision patch size (image_size / patch_size squared tokens)"})
    vision_width: int = field(default=96, metadata={"help": "CLIP vision hidden size"})
    vision_layers: int = field(default=4, metadata={"help": "CLIP vision layers"})
    text_width: int = field(default=128, metadata={"help": "Llama hidden size"})
    text_layers: int = field(default=3, metadata={"help": "Llama layers"})
    heads: int = field(default=4, metadata={"help": "attention heads of both towers"})
    pretrain_steps: int = field(default=0, metadata={
        "help": "contrastive vision pre-training steps against MiniLM caption embeddings (0: none)"})
    pretrain_batch_size: int = field(default=128, metadata={"help": "images per pre-training step"})
    pretrain_lr: float = field(default=1e-3, metadata={"help": "peak learning rate of the pre-training"})
    pretrain_coarse_weight: float = field(default=0.5, metadata={
        "help": "weight of the same contrastive loss on the coarse layer's tokens (grounds V_coarse; 0: off)"})
    pretrain_object_weight: float = field(default=3.0, metadata={
        "help": "weight of an auxiliary pre-training loss: which annotated object names and name words (e.g. "
                "'red cube', 'red', 'cube') are in the image (multi-label, train annotations; 0: off)"})
    pretrain_shift: int = field(default=4, metadata={
        "help": "pre-training augmentation: random shift of each image by up to this many pixels (edges "
                "replicated; no flips, the captions say left and right; 0: none)"})
    distill_steps: int = field(default=1500, metadata={
        "help": "feature distillation steps before the pre-training: the tower's patch tokens regress the "
                "pretrained EfficientNet-Lite0's map of distill_stage on the same images (0: none)"})
    distill_stage: str = field(default="stage5", metadata={
        "help": "EfficientNet-Lite0 stage the last layer's patch tokens regress (stage5: 112 channels, stride 16)"})
    distill_coarse_stage: str = field(default="stage3", metadata={
        "help": "EfficientNet-Lite0 stage the coarse layer's patch tokens regress (pooled to the patch grid)"})
    distill_coarse_weight: float = field(default=0.5, metadata={
        "help": "weight of the coarse layer's distillation loss (grounds V_coarse; 0: off)"})
    summary_token: bool = field(default=True, metadata={
        "help": "keep the vision tower's CLS token as the first image token (LLaVA's 'full' feature strategy) and "
                "teach it, during the distillation, how many objects of each attribute value and pair of values "
                "the image holds (train scene graphs; object names elsewhere): a summary the language model can "
                "read at one position"})
    distill_summary_weight: float = field(default=1.0, metadata={
        "help": "weight of the summary token's loss (squared error of log(1 + count) per label)"})
    distill_batch_size: int = field(default=64, metadata={"help": "images per distillation step"})
    distill_lr: float = field(default=1e-3, metadata={"help": "peak learning rate of the distillation"})
    steps: int = field(default=2500, metadata={"help": "LLaVA optimizer steps (alignment included)"})
    align_steps: int = field(default=250, metadata={
        "help": "first LLaVA steps with the vision tower frozen (LLaVA's stage 1; 0: none)"})
    vision_lr_scale: float = field(default=0.1, metadata={
        "help": "vision tower learning rate after alignment, as a multiple of lr (0: keep it frozen)"})
    questions_per_image: int = field(default=6, metadata={
        "help": "POPE-style yes/no questions per training image, half yes half no (even; 0: captions only)"})
    question_families: tuple[str, ...] = field(default=(
        "exist", "count", "query_color", "query_size", "query_material", "query_shape", "compare_integer", "relate"),
        metadata={"help": "families of `dsanchor data questions` to train on, with exact answers from the train "
                          "scene graphs (synth and CLEVR; other data has none)"})
    questions_per_family: int = field(default=2, metadata={
        "help": "scene questions per family and train image, at most (yes/no families balanced; 0: none)"})
    caption_prompts: bool = field(default=True, metadata={
        "help": "also train the caption prompts of `dsanchor data questions` (scene, object, relation), one row "
                "per reference caption, where the data has scene graphs"})
    object_lists: bool = field(default=True, metadata={
        "help": "also train an object list per train image (every object's colour and shape, left to right), "
                "where the data has scene graphs"})
    turns_per_text: int = field(default=8, metadata={
        "help": "pack up to this many rows of one image into one multi-turn sequence (the image tokens paid once; "
                "1: one row per sequence)"})
    loss_per_text: bool = field(default=False, metadata={
        "help": "average the training loss over each text's tokens, then over texts, so a one-word yes/no "
                "answer weighs as much as a caption (off: over all tokens, as transformers does)"})
    ground_weight: float = field(default=1.0, metadata={
        "help": "weight of an auxiliary patch-word grounding loss during the LLaVA stages: each image token after "
                "the projector (at the drawn g) predicts, by cosine with the language model's word embeddings, the "
                "words (colour, size, material, shape) of the objects whose box covers its patch, the summary token "
                "every word in the image (multi-label; located objects of the train split; 0: off). On synth at "
                "1.0 POPE F1 rose from 0.37 to 0.75 (scripts/mllm_see_diag/README.md)"})
    batch_size: int = field(default=16, metadata={"help": "training sequences (conversations of up to "
                                                          "turns_per_text rows) per step"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (linear warm-up, cosine decay)"})
    eval_every: int = field(default=500, metadata={"help": "steps between val losses (early stopping)"})
    coarse_layer: int = field(default=1, metadata={"help": "vision hidden state that gives V_coarse"})
    max_words: int = field(default=32, metadata={"help": "longest answer in words (captions, object lists); "
                                                            "longer ones are cut"})
    uniform_g: bool = field(default=True, metadata={
        "help": "train with g ~ U[0, 1] per image (--no-uniform-g: g = 1 throughout, like a pretrained MLLM that "
                "has only seen V_fine at its seam; the model `dsanchor mllm adapt` is for)"})
    seed: int = field(default=0, metadata={"help": "seed of init, batches, questions and g"})

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.vision_width % self.heads or self.text_width % self.heads:
            raise ConfigError("vision_width and text_width must be multiples of heads")
        if min(self.steps, self.batch_size, self.eval_every, self.pretrain_batch_size) < 1:
            raise ConfigError("steps, batch_size, eval_every and pretrain_batch_size must be >= 1")
        if min(self.pretrain_steps, self.align_steps, self.questions_per_image) < 0:
            raise ConfigError("pretrain_steps, align_steps and questions_per_image must be >= 0")
        if self.align_steps >= self.steps:
            raise ConfigError(f"align_steps {self.align_steps} must be smaller than steps {self.steps}")
        if self.questions_per_image % 2:
            raise ConfigError(f"questions_per_image must be even (half yes, half no); got {self.questions_per_image}")
        unknown = sorted(set(self.question_families) - set(QUESTION_FAMILIES))
        if unknown:
            raise ConfigError(f"unknown question_families {unknown}; valid: {', '.join(QUESTION_FAMILIES)}")
        if self.turns_per_text < 1 or self.questions_per_family < 0:
            raise ConfigError("turns_per_text must be >= 1 and questions_per_family >= 0")
        if self.distill_steps < 0 or self.distill_batch_size < 1 or self.distill_coarse_weight < 0:
            raise ConfigError("distill_steps and distill_coarse_weight must be >= 0, distill_batch_size >= 1")
        if min(self.vision_lr_scale, self.pretrain_coarse_weight, self.pretrain_object_weight) < 0:
            raise ConfigError("vision_lr_scale, pretrain_coarse_weight and pretrain_object_weight must be >= 0")
        if self.ground_weight < 0:
            raise ConfigError(f"ground_weight must be >= 0; got {self.ground_weight}")
        if not 0 <= self.coarse_layer <= self.vision_layers:
            raise ConfigError(f"coarse_layer must lie in [0, {self.vision_layers}] (vision_layers); "
                              f"got {self.coarse_layer}")


@dataclass
class AnswerConfig:
    """``mllm answer``: a CLEVR-format questions file answered by a local MLLM, with or without DSA."""

    model_type: str | None = field(default=None, metadata={"help": "llava, blip2 or idefics"})
    model_path: str | None = field(default=None, metadata={"help": "local directory saved with save_pretrained"})
    questions: str | None = field(default=None, metadata={
        "help": "questions JSON in CLEVR's format (`dsanchor data questions` writes one)"})
    images: str | None = field(default=None, metadata={"help": "folder the questions' image_filename are in"})
    g: float | None = field(default=None, metadata={"help": "a fixed g for DSA (with neither --g nor --controller: "
                                                            "the model as it is)"})
    controller: str | None = field(default=None, metadata={"help": "a controller from `dsanchor mllm train`"})
    coarse_layer: int = field(default=1, metadata={"help": "vision hidden-state index that gives V_coarse"})
    adapter: str | None = field(default=None, metadata={"help": "seam adapter from `dsanchor mllm adapt`"})
    batch_size: int = field(default=8, metadata={"help": "questions per generate call"})
    max_new_tokens: int = field(default=5, metadata={"help": "tokens generated per answer"})
    caption_tokens: int = field(default=30, metadata={"help": "tokens generated per caption prompt (rows with "
                                                              "references)"})
    limit: int | None = field(default=None, metadata={"help": "answer at most this many questions"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda or auto"})
    dtype: str = field(default="auto", metadata={"help": "auto (the checkpoint's), float32, float16 or bfloat16"})
    out: str | None = field(default=None, metadata={"help": "answers JSON to write (default: print a summary only)"})

    def check(self) -> None:
        """One-line errors for missing or contradictory values."""
        for name in ("model_type", "model_path", "questions", "images"):
            if getattr(self, name) is None:
                raise ConfigError(f"--{name.replace('_', '-')} is required")
        get_family(self.model_type)
        if self.g is not None and self.controller is not None:
            raise ConfigError("give --g or --controller, not both")
        if self.g is not None and not 0.0 <= self.g <= 1.0:
            raise ConfigError(f"--g must lie in [0, 1], got {self.g}")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ConfigError("--batch-size and --max-new-tokens must be at least 1")
