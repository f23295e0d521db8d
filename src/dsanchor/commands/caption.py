"""``dsanchor caption``: train the caption decoder, caption a split, and evaluate every captioning method.

    dsanchor caption train    --features FEATS --heads HEADS --out DIR [config flags]
    dsanchor caption generate --features FEATS --heads HEADS --decoder DIR (--g G | --controller CTRL)
                              [--split test] [--beam 3] --out FILE.jsonl
    dsanchor caption eval     --features FEATS --heads HEADS --decoder DIR --out DIR [--hall-detector DET]

``train`` and ``eval`` run the library's stages (:func:`dsanchor.stages.caption_train_stage` and
:func:`dsanchor.stages.caption_eval_stage`), the ones ``dsanchor run`` and the demo run. ``train`` writes the
decoder, its vocabulary, ``config.yaml`` (sections ``decoder``, ``caption_train``, ``vocab``) and
``caption_train.json`` (per-check history). ``eval`` fits fixed_best, gate_grad and dsa_ppo on val, evaluates
coarse, fine, fixed_best, gate_grad, dsa_ppo and the oracle (an upper bound) on the test split, and writes
``caption_metrics.json``, the controllers (``ppo/controller``, ``gate/controller``, usable with
``generate --controller``) and each method's captions.
"""

from __future__ import annotations

import argparse

from dsanchor.commands._common import add_common, set_threads, yaml_of
from dsanchor.config import add_config_args, resolve_config
from dsanchor.errors import ConfigError
from dsanchor.files import write_captions


def _inputs(p: argparse.ArgumentParser, decoder: bool = True) -> None:
    p.add_argument("--features", required=True, help="feature store written by `dsanchor extract`")
    p.add_argument("--heads", required=True, help="alignment heads written by `dsanchor align`")
    if decoder:
        p.add_argument("--decoder", required=True, help="decoder directory written by `dsanchor caption train`")
    add_common(p)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from dsanchor.captioning import (
        CaptionGateConfig,
        CaptionRLConfig,
        CaptionTrainConfig,
        DecodeConfig,
        DecoderConfig,
        VocabConfig,
    )
    from dsanchor.commands._common import add_overwrite
    from dsanchor.rl.ppo import PPOConfig

    p = sub.add_parser("caption", help="caption decoder over V': train, generate, evaluate methods")
    csub = p.add_subparsers(dest="caption_command", metavar="ACTION", required=True)

    t = csub.add_parser("train", help="train the caption decoder on the train captions (g ~ U[0, 1])")
    _inputs(t, decoder=False)
    t.add_argument("--out", required=True, help="directory for the decoder and its vocabulary")
    add_overwrite(t)
    add_config_args(t, DecoderConfig, prefix="decoder_", skip=("vocab_size", "visual_dim", "max_len"))
    add_config_args(t, CaptionTrainConfig)
    add_config_args(t, VocabConfig, prefix="vocab_")
    t.set_defaults(func=run_train)

    g = csub.add_parser("generate", help="caption one split at a fixed g or with a controller")
    _inputs(g)
    which = g.add_mutually_exclusive_group(required=True)
    which.add_argument("--g", type=float, help="one granularity in [0, 1] for every image")
    which.add_argument("--controller", help="captioning controller (ppo/controller or gate/controller of "
                                            "`dsanchor caption eval`)")
    g.add_argument("--split", default="test", choices=("train", "val", "test"), help="images to caption")
    g.add_argument("--granularity", default="all", choices=("all", "any", "scene", "object", "relation"),
                   help="all: one caption per granularity ({granularity: caption}); any: one caption from <bos>; "
                        "or one granularity")
    g.add_argument("--out", required=True, help="JSON-lines file: one {image_id, caption, g} per image")
    add_config_args(g, DecodeConfig)
    g.set_defaults(func=run_generate)

    e = csub.add_parser("eval", help="fit the captioning methods on val and evaluate them on test")
    _inputs(e)
    e.add_argument("--out", required=True, help="run directory for controllers, captions and metrics")
    add_overwrite(e)
    e.add_argument("--hall-detector", default=None, help="hallucination detector (dsanchor hallucination train); "
                                                         "without it the reward has no hallucination term")
    e.add_argument("--vocabulary", default="auto", choices=("auto", "synth", "coco"),
                   help="object vocabulary of CHAIR and the detector (auto: synth for CLEVR-style names)")
    add_config_args(e, CaptionRLConfig)
    add_config_args(e, PPOConfig, prefix="ppo_")
    add_config_args(e, CaptionGateConfig, prefix="gate_")
    add_config_args(e, DecodeConfig)
    e.set_defaults(func=run_eval)


def _load(args: argparse.Namespace):
    from dsanchor.align.heads import AlignmentHeads
    from dsanchor.features.store import FeatureStore

    return FeatureStore(args.features), AlignmentHeads.from_pretrained(args.heads)


def run_train(args: argparse.Namespace) -> int:
    from dsanchor.captioning import CaptionTrainConfig, DecoderConfig, VocabConfig, Vocabulary
    from dsanchor.commands._common import accept_command_out
    from dsanchor.stages import caption_train_stage

    set_threads(args)
    y = yaml_of(args)
    cfg = resolve_config(DecoderConfig, args, y, prefix="decoder_", section="decoder")
    train_cfg = resolve_config(CaptionTrainConfig, args, y, section="caption_train")
    vocab_cfg = resolve_config(VocabConfig, args, y, prefix="vocab_", section="vocab")
    accept_command_out(args, "caption train")  # before anything is written
    info = caption_train_stage(args.features, args.heads, args.out, cfg, train_cfg, vocab_cfg)
    last = info["history"][-1]
    print(f"decoder saved to {args.out} ({info['train_time_s']:.1f}s, {info['steps']} steps, "
          f"vocabulary {len(Vocabulary.load(args.out))}); best val {info['early_stop']} score "
          f"{info['best_val_score']:.3f}, last val loss {last['val_loss']:.3f}")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    import torch

    from dsanchor.captioning import DecodeConfig, caption_states, generate_captions, load_captioner
    from dsanchor.captioning.decode import generate_caption_sets
    from dsanchor.controller import GranularityController

    set_threads(args)
    decode = resolve_config(DecodeConfig, args, yaml_of(args), section="decode")
    from dsanchor.stages import caption_split

    store, heads = _load(args)
    split, _ = caption_split(store, heads, args.split)
    decoder, vocab = load_captioner(args.decoder)
    if args.controller:
        ctrl = GranularityController.from_pretrained(args.controller)
        states = caption_states(split)
        if ctrl.config.state_dim != states.shape[1]:
            raise ConfigError(f"{args.controller}: controller expects states of size {ctrl.config.state_dim}, "
                              f"captioning states have {states.shape[1]}; pass a captioning controller")
        with torch.no_grad():
            g = ctrl(states)
    else:
        if not 0.0 <= args.g <= 1.0:
            raise ConfigError(f"--g must lie in [0, 1]; got {args.g}")
        g = torch.full((len(split),), float(args.g))
    with torch.no_grad():
        pair = decoder.token_pair(split)
        caps = (generate_caption_sets(decoder, vocab, pair, g, decode) if args.granularity == "all" else
                generate_captions(decoder, vocab, pair, g, decode, args.granularity))
    write_captions(args.out, split.image_ids.tolist(), caps, g.tolist())
    print(f"{len(caps)} captions of the {args.split} split written to {args.out} (mean g {float(g.mean()):.3f})")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from dsanchor.captioning import CaptionGateConfig, CaptionRLConfig, DecodeConfig
    from dsanchor.commands._common import accept_command_out
    from dsanchor.rl.ppo import PPOConfig
    from dsanchor.stages import caption_eval_stage

    set_threads(args)
    y = yaml_of(args)
    rl = resolve_config(CaptionRLConfig, args, y, section="caption_rl")
    ppo = resolve_config(PPOConfig, args, y, prefix="ppo_", section="ppo")
    gate = resolve_config(CaptionGateConfig, args, y, prefix="gate_", section="gate")
    decode = resolve_config(DecodeConfig, args, y, section="decode")
    accept_command_out(args, "caption eval")  # before anything is written
    metrics = caption_eval_stage(args.features, args.heads, args.decoder, args.out, rl, ppo, gate, decode,
                                 args.hall_detector, args.vocabulary)
    print(_table(metrics["methods"]))
    return 0


def _table(results: dict) -> str:
    keys = ("BLEU-4", "CIDEr", "CHAIR_i", "CHAIR_s", "mean_g")
    lines = [f"{'method':<12}" + "".join(f"{k:>9}" for k in keys) + "   (CIDEr raw; oracle is an upper bound)"]
    for name, row in results.items():
        lines.append(f"{name:<12}" + "".join(f"{row[k]:>9.3f}" for k in keys))
    return "\n".join(lines)
