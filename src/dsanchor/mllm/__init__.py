"""The DSA-in-an-MLLM experiment that ``dsanchor mllm ...`` runs, on the adapters of :mod:`dsanchor.integrations`.

:mod:`.config` holds every configuration and default; :mod:`.data` loads the model and the samples (one split
rule); :mod:`.generate` is the one generate loop; :mod:`.grid` caches texts at a grid of g (per image, or per
item), :mod:`.rewards` scores captions for PPO and :mod:`.items` questions and caption prompts (``--questions``)
(:mod:`.train`: train and tune; :mod:`.router` the ``router_loss`` baseline); :mod:`.evaluate` measures base /
fixed_best / dsa_ppo / oracle with :mod:`.scores` (BLEU, CIDEr, CHAIR), :mod:`.pope` and :mod:`.embed`
(retrieval), and :mod:`.evaluate_items` the methods per question family (:mod:`.seeds`: several PPO seeds);
:mod:`.caption` is ``mllm caption``, :mod:`.answer` ``mllm answer``; :mod:`.build` trains the small LLaVA, with
:mod:`.distill` (EfficientNet-Lite0 teaches its tower), :mod:`.pretrain` (contrastive tower pre-training),
:mod:`.instructions` (its training rows, packed in conversations) and :mod:`.ground` (the patch-word grounding
loss of its image tokens); :mod:`.adapt` the seam adapter.
"""

from dsanchor.mllm.adapt import run_adapt
from dsanchor.mllm.answer import run_mllm_answer
from dsanchor.mllm.build import build_from_dataset, train_llava
from dsanchor.mllm.caption import run_mllm_caption
from dsanchor.mllm.config import (
    AdaptConfig,
    BuildConfig,
    CaptionConfig,
    GridConfig,
    MLLMConfig,
    MLLMEvalConfig,
    MLLMTrainConfig,
    RouterConfig,
    mllm_ppo,
    mllm_reward,
    mllm_tune,
)
from dsanchor.mllm.data import MLLMData, load_mllm_data
from dsanchor.mllm.evaluate import run_mllm_eval
from dsanchor.mllm.evaluate_items import run_item_eval
from dsanchor.mllm.generate import CaptionRun, caption_samples
from dsanchor.mllm.items import Item, item_split
from dsanchor.mllm.router import train_router
from dsanchor.mllm.train import train_mllm_controller, tune_mllm_reward

__all__ = ["AdaptConfig", "BuildConfig", "CaptionConfig", "CaptionRun", "GridConfig", "Item", "MLLMConfig", "MLLMData",
           "MLLMEvalConfig", "MLLMTrainConfig", "RouterConfig", "build_from_dataset", "caption_samples", "item_split",
           "load_mllm_data", "mllm_ppo", "mllm_reward", "mllm_tune", "run_adapt", "run_item_eval", "run_mllm_answer",
           "run_mllm_caption", "run_mllm_eval", "train_llava", "train_mllm_controller", "train_router",
           "tune_mllm_reward"]
