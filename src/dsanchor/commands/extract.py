"""``dsanchor extract``: encode a dataset into a feature store.

    dsanchor extract --data DIR --format coco|vg|clevr --out FEATS [--encoder NAME] [--split S]
                     [--batch-size B] [--workers W] [--max-regions R] [--model-path P] ...
    torchrun --nproc-per-node 2 -m dsanchor.cli extract ...      # shards the work over processes

Flags come from ExtractConfig, RegionConfig and the encoder backends' configs; a YAML file given
with ``--config`` may set them in sections ``extract``, ``regions`` and ``encoder``.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

import torch.distributed as dist

from dsanchor.commands._common import add_common, set_threads, yaml_of
from dsanchor.config import add_config_args, config_to_dict, resolve_config, save_resolved
from dsanchor.data import list_formats
from dsanchor.encoders import DEFAULT_ENCODER, RegionConfig, create_encoder, encoder_config_class, list_encoders
from dsanchor.errors import ConfigError, DataError
from dsanchor.features import ExtractConfig, FeatureStore, extract_features, init_distributed


def _encoder_fields() -> dict[str, list[str]]:
    """Field name -> the backends whose config has it."""
    owners: dict[str, list[str]] = {}
    for name in list_encoders():
        for f in dataclasses.fields(encoder_config_class(name)):
            owners.setdefault(f.name, []).append(name)
    return owners


def _add_encoder_args(parser: argparse.ArgumentParser) -> None:
    """One flag per encoder config field over all backends; a shared field gets one flag (first backend's help)."""
    added: set[str] = set()
    for name in list_encoders():
        cls = encoder_config_class(name)
        add_config_args(parser, cls, skip=tuple(added))
        added.update(f.name for f in dataclasses.fields(cls))


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from dsanchor.commands._common import add_overwrite

    p = subparsers.add_parser(
        "extract", help="encode a dataset into a feature store",
        description="Encode images (coarse + region vectors) and captions into a sharded feature store. "
                    "Rerunning an interrupted extraction resumes it; under torchrun the shards are split "
                    "over the processes.")
    p.add_argument("--data", required=True, help="dataset root directory")
    p.add_argument("--format", required=True, help=f"dataset format: {', '.join(list_formats())}")
    p.add_argument("--out", required=True, help="feature store directory to write")
    p.add_argument("--encoder", default=DEFAULT_ENCODER, choices=list_encoders(),
                   help=f"encoder backend (default: {DEFAULT_ENCODER}); flags of another backend are "
                        "rejected; for clip, --coarse-pool is cls or cls+grid2 and --image-size defaults "
                        "to the model's")
    p.add_argument("--split", default=None, help="only the images of this split (default: all)")
    add_common(p)  # --config YAML (sections extract, regions, encoder) and --threads
    add_overwrite(p)  # the one --overwrite of every command (ExtractConfig.overwrite)
    add_config_args(p, ExtractConfig, skip=("overwrite",))
    add_config_args(p, RegionConfig)
    _add_encoder_args(p)
    p.set_defaults(func=run)
    return p


def _encoder_config(args: argparse.Namespace, yaml_values: dict[str, typing.Any]):
    """The chosen backend's config; a flag of another backend is an error."""
    for fname, owners in _encoder_fields().items():
        if args.encoder not in owners and getattr(args, fname, None) is not None:
            flag = "--" + fname.replace("_", "-")
            raise ConfigError(f"{flag} applies to encoder {', '.join(owners)}, not {args.encoder}")
    return resolve_config(encoder_config_class(args.encoder), args, yaml_values, section="encoder")


def _load_samples(fmt: str, root: str, split: str | None):
    from dsanchor.data import load_dataset

    try:
        samples = load_dataset(fmt, root, split=split)
    except ValueError as exc:  # unknown format name
        raise ConfigError(str(exc)) from None
    if not samples:
        raise DataError(root, f"no images{f' in split {split!r}' if split else ''}; check --data and --split")
    return samples


def run(args: argparse.Namespace) -> int:
    yaml_values = yaml_of(args)
    set_threads(args)
    extract_cfg = resolve_config(ExtractConfig, args, yaml_values, section="extract")
    region_cfg = resolve_config(RegionConfig, args, yaml_values, section="regions")
    encoder_cfg = _encoder_config(args, yaml_values)
    joined = not dist.is_initialized()
    rank, _world = init_distributed()
    try:
        samples = _load_samples(args.format, args.data, args.split)
        encoder = create_encoder(args.encoder, encoder_cfg)
        result = extract_features(samples, args.data, args.out, encoder, extract_cfg, region_cfg,
                                  source={"format": args.format, "split": args.split})
        out = result.out
        if rank == 0:
            save_resolved(out, extract=extract_cfg, regions=region_cfg, encoder=config_to_dict(encoder_cfg),
                          run={"data": args.data, "format": args.format, "encoder": args.encoder,
                               "split": args.split, "out": args.out})
            store = FeatureStore(out)
            for line in result.skipped:
                print(f"skipped {line}")
            if result.images:
                print(f"extracted {result.summary()}")
            print(f"feature store {out}: {len(store)} images, {store.manifest['n_texts']} captions, "
                  f"{store.num_shards} shards, dims {store.dims}")
    finally:
        if joined and dist.is_initialized():
            dist.destroy_process_group()
    return 0
