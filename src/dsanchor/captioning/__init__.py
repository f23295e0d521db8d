"""Captioning over the anchored visual tokens V' = g V_fine + (1 - g) V_coarse (DESIGN.md "Captioning").

* :mod:`~dsanchor.captioning.tokens`: how V_fine and V_coarse are built as token sequences of one shape;
* :mod:`~dsanchor.captioning.tokenizer`: the word vocabulary of the training captions;
* :mod:`~dsanchor.captioning.granularity`: the caption granularities (scene, object, relation), read off a
  caption's text, and their shares;
* :mod:`~dsanchor.captioning.decoder`: the transformer decoder with a start token per granularity;
  :mod:`~dsanchor.captioning.train` trains it with g drawn uniformly per caption, each caption started
  from its granularity's token; :mod:`~dsanchor.captioning.decode`: greedy and beam search, one caption per
  granularity per image;
* :mod:`~dsanchor.captioning.controller`: the captioning controller (PPO and gradient gate), fixed-g and oracle;
* :mod:`~dsanchor.captioning.evaluate`: per-image CIDEr-D, the g grid, and per-method caption metrics.
"""

from dsanchor.captioning.controller import (
    CaptionGateConfig,
    CaptionMethods,
    CaptionRewardModel,
    CaptionRLConfig,
    DetectorHallucination,
    caption_state_dim,
    caption_states,
    fit_caption_methods,
    oracle_g,
    select_fixed_g,
    train_caption_gate,
    train_caption_ppo,
)
from dsanchor.captioning.decode import (
    DecodeConfig,
    beam_search,
    caption_kinds,
    generate_caption_sets,
    generate_captions,
    greedy_decode,
)
from dsanchor.captioning.decoder import CaptionDecoder, DecoderConfig, load_captioner
from dsanchor.captioning.evaluate import (
    CaptionSet,
    GridOutcomes,
    HallucinationEstimator,
    caption_metrics,
    captions_for,
    cider_of_sets,
    cider_per_image,
    evaluate_captioning,
    g_grid,
    score_grid,
)
from dsanchor.captioning.granularity import ANY, GRANULARITIES, granularity_mix, text_granularity
from dsanchor.captioning.tokenizer import VocabConfig, Vocabulary, ptb_tokenize
from dsanchor.captioning.tokens import CaptionSplit, ScenePositions, TokenPair, build_token_pair, prepare_caption_split
from dsanchor.captioning.train import CaptionTrainConfig, caption_examples, caption_loss, train_decoder

__all__ = [
    "CaptionDecoder", "DecoderConfig", "load_captioner",
    "Vocabulary", "VocabConfig", "ptb_tokenize",
    "CaptionSplit", "TokenPair", "ScenePositions", "build_token_pair", "prepare_caption_split",
    "CaptionTrainConfig", "train_decoder", "caption_examples", "caption_loss",
    "DecodeConfig", "greedy_decode", "beam_search", "generate_captions", "generate_caption_sets", "caption_kinds",
    "GRANULARITIES", "ANY", "text_granularity", "granularity_mix",
    "CaptionRLConfig", "CaptionGateConfig", "CaptionRewardModel", "CaptionMethods", "caption_states",
    "caption_state_dim", "DetectorHallucination", "train_caption_ppo", "train_caption_gate", "select_fixed_g",
    "oracle_g", "fit_caption_methods",
    "HallucinationEstimator", "GridOutcomes", "CaptionSet", "cider_per_image", "cider_of_sets", "score_grid",
    "captions_for", "caption_metrics", "evaluate_captioning", "g_grid",
]
