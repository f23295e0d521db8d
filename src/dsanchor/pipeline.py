"""A trained DSA in one folder, and what it does on raw images and text (DESIGN.md "Pipeline").

:class:`DSAPipeline` holds everything that turns raw inputs into DSA's outputs: the encoder backend and its
config, the region source (:class:`~dsanchor.encoders.regions.RegionConfig`), the alignment heads, the PPO
controller with the state layout it reads (:class:`~dsanchor.state.StateConfig`, its codebook inside the
controller), the fixed g chosen on val (used when there is no controller), the hallucination detector with
the dataset's object vocabulary, and the caption decoder with its word vocabulary. It is saved as one folder
of safetensors and JSON (nothing is unpickled)::

    pipeline/
        pipeline.json        format, encoder (name, config, dims), regions, state, fixed_g, chair vocabulary,
                             which parts are present, where they came from, and "domain": what it was trained
                             on (dataset, format, training images, region source) with the out-of-domain
                             thresholds (dsanchor.domain; absent in pipelines saved before it)
        domain.safetensors   the out-of-domain references (training coarse vectors and caption vectors)
        heads/ controller/ detector/ decoder/     each part's own save_pretrained folder
        objects.safetensors + objects.json        the object vocabulary's names and text embeddings

Loading checks that the parts fit each other (feature sizes, the controller's state size, the decoder's
visual size) and raises one :class:`~dsanchor.errors.ConfigError` line naming the first that does not.

Text→image search scores the query against the index's projected scene vectors through faiss, then re-ranks
the top ``m`` with DSA at the controller's g (:func:`dsanchor.retrieval.two_stage_search`). A text query's
state is the query state of :func:`dsanchor.state.query_states` (the text's encoder vector; the image part is
zero), an image query's is its scene vector's; the controller maps either to a query type (its codebook) and a
g. The encoder is built on first use, so a pipeline that only searches an index of stored features never
loads an image backbone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from dsanchor.errors import ConfigError, DataError
from dsanchor.files import write_json
from dsanchor.image_index import build_index

__all__ = ["PIPELINE_FORMAT", "DSAPipeline", "GChoice", "Hit", "load", "save_pipeline"]

PIPELINE_FORMAT = 1
PIPELINE_FILE = "pipeline.json"


@dataclass(frozen=True)
class GChoice:
    """The g used for a query and why: ``source`` is "controller", "fixed" (the pipeline's val-chosen g, when
    it has no controller), "given" (the caller's) or "per-pair controller" (a text search whose results each have
    their own g, :mod:`dsanchor.pairs`; ``g`` is their mean over the re-ranked candidates); ``query_type`` is the
    controller's codebook entry (text types 0..k-1, image types k..2k-1), None without a codebook."""

    g: float
    source: str
    query_type: int | None = None

    def describe(self) -> str:
        why = {"controller": "chosen by the controller", "fixed": "the pipeline's fixed g (chosen on val)",
               "given": "given", "per-pair controller": "mean over the top candidates; the per-pair controller "
               "chose each result's own g"}[self.source]
        kind = f", query type {self.query_type}" if self.query_type is not None else ""
        return f"g = {self.g:.2f} ({why}{kind})"


@dataclass(frozen=True)
class Hit:
    """One search result: the image (its path as indexed), its DSA score and the g of the query."""

    path: str
    score: float
    g: float
    rank: int


def _open(image: str | Path | Image.Image) -> Image.Image:
    from dsanchor.encoders.transforms import load_rgb

    return image.convert("RGB") if isinstance(image, Image.Image) else load_rgb(image)


class DSAPipeline:
    """Everything a trained DSA needs on raw inputs (module docstring). Build with :func:`save_pipeline` or
    :meth:`from_pretrained`; every part but the heads is optional."""

    def __init__(self, encoder: dict[str, Any], regions, heads, controller=None, state=None, fixed_g: float = 0.5,
                 detector=None, objects=None, decoder=None, vocab=None, vocabulary: str = "synth",
                 info: dict[str, Any] | None = None, domain=None, pair_controller=None):
        from dsanchor.encoders.regions import RegionConfig
        from dsanchor.state import StateConfig

        self.encoder_spec = encoder  # {"name", "config", "dims"}
        self.regions: RegionConfig = regions
        self.heads = heads.eval()
        self.controller = None if controller is None else controller.eval()
        self.state: StateConfig = state or StateConfig()
        self.fixed_g = float(fixed_g)
        self.detector = None if detector is None else detector.eval()
        self.objects = objects  # ObjectVocabulary or None
        self.decoder = None if decoder is None else decoder.eval()
        self.vocab = vocab
        self.vocabulary = vocabulary
        self.info = info or {}
        self.domain = domain  # TrainingDomain (dsanchor.domain): what it was trained on; None for older pipelines
        self.pair_controller = None if pair_controller is None else pair_controller.eval()  # dsanchor.pairs
        self.path: Path | None = None  # the folder it was loaded from or saved to
        self._encoder = None
        self._detector_model = None  # the region source's object detector, when it has one
        self._check()

    # ---- parts ------------------------------------------------------------------------------------------------

    def _check(self) -> None:
        """Raise one ConfigError line for the first pair of parts that do not fit."""
        d = self.encoder_spec["dims"]
        h = self.heads.config
        if (h.coarse_dim, h.region_dim, h.text_dim) != (d["coarse"], d["region"], d["text"]):
            want = (h.coarse_dim, h.region_dim, h.text_dim)
            raise ConfigError(f"the heads expect features (coarse, region, text) = {want} but the encoder gives "
                              f"{(d['coarse'], d['region'], d['text'])}")
        if self.controller is not None:
            if self.state.state_kind != "query":
                raise ConfigError(f"a pipeline runs query-state controllers; this one reads "
                                  f"{self.state.state_kind!r} states")
            want = d["text"] + d["coarse"] + 1
            if self.controller.config.state_dim != want:
                raise ConfigError(f"the controller reads states of size {self.controller.config.state_dim} but the "
                                  f"encoder's query state has {want} (text {d['text']} + coarse {d['coarse']} + 1)")
        if self.detector is not None:
            c = self.detector.config
            if (c.coarse_dim, c.region_dim, c.text_dim) != (d["coarse"], d["region"], d["text"]):
                raise ConfigError("the hallucination detector was trained on other features than the encoder's")
            if self.objects is None:
                raise ConfigError("a pipeline with a hallucination detector needs its object vocabulary")
        if self.decoder is not None:
            if self.vocab is None:
                raise ConfigError("a pipeline with a caption decoder needs its word vocabulary")
            if self.decoder.config.visual_dim != h.dim:
                raise ConfigError(f"the caption decoder reads {self.decoder.config.visual_dim}-d visual tokens but "
                                  f"the heads' joint space has {h.dim}")
            if self.decoder.config.vocab_size != len(self.vocab):
                raise ConfigError(f"the caption decoder has {self.decoder.config.vocab_size} words but its "
                                  f"vocabulary {len(self.vocab)}")

    @property
    def encoder(self):
        """The encoder backend, built on first use."""
        if self._encoder is None:
            from dsanchor.encoders import encoder_from_spec

            self._encoder = encoder_from_spec(self.encoder_spec, where=PIPELINE_FILE)
        return self._encoder

    # ---- save / load ------------------------------------------------------------------------------------------

    def save_pretrained(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        from dsanchor.config import config_to_dict

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        self.heads.save_pretrained(out / "heads")
        parts = {"heads": True}
        for name, part in (("controller", self.controller), ("detector", self.detector),
                           ("pair_controller", self.pair_controller)):
            if part is not None:
                part.save_pretrained(out / name)
            parts[name] = part is not None
        if self.decoder is not None:
            self.decoder.save_pretrained(out / "decoder", self.vocab)
        parts["decoder"] = self.decoder is not None
        if self.objects is not None:
            save_file({"embeddings": self.objects.embeddings.float().contiguous()}, str(out / "objects.safetensors"))
            write_json(out / "objects.json", {"names": list(self.objects.names)}, indent=1)
        meta = {"format": PIPELINE_FORMAT, "encoder": self.encoder_spec, "regions": config_to_dict(self.regions),
                "state": config_to_dict(self.state), "fixed_g": self.fixed_g, "chair_vocabulary": self.vocabulary,
                "parts": parts, "info": self.info}
        if self.domain is not None:
            meta["domain"] = self.domain.save(out)
        write_json(out / PIPELINE_FILE, meta)
        self.path = out
        return out

    @classmethod
    def from_pretrained(cls, path: str | Path) -> DSAPipeline:
        from safetensors.torch import load_file

        from dsanchor.align.heads import AlignmentHeads
        from dsanchor.captioning.decoder import CaptionDecoder
        from dsanchor.captioning.tokenizer import Vocabulary
        from dsanchor.config import config_from_dict
        from dsanchor.controller import GranularityController
        from dsanchor.domain import TrainingDomain
        from dsanchor.encoders.regions import RegionConfig
        from dsanchor.features.types import ObjectVocabulary
        from dsanchor.hallucination import HallucinationDetector
        from dsanchor.pairs import PairController
        from dsanchor.state import StateConfig

        p = Path(path)
        meta_file = p / PIPELINE_FILE
        if not meta_file.is_file():
            raise DataError(p, f"not a saved DSA pipeline (no {PIPELINE_FILE}); `dsanchor train` and `dsanchor "
                               "demo` write one")
        try:
            meta = json.loads(meta_file.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(meta_file, f"not valid JSON ({exc.msg})") from None
        if meta.get("format") != PIPELINE_FORMAT:
            raise DataError(meta_file, f"pipeline format {meta.get('format')!r}; this dsanchor reads format "
                                       f"{PIPELINE_FORMAT}")
        parts = meta.get("parts", {})
        objects = None
        if (p / "objects.json").is_file():
            names = json.loads((p / "objects.json").read_text())["names"]
            objects = ObjectVocabulary(names, load_file(str(p / "objects.safetensors"))["embeddings"])
        decoder = vocab = None
        if parts.get("decoder"):
            decoder, vocab = CaptionDecoder.from_pretrained(p / "decoder"), Vocabulary.load(p / "decoder")
        pipe = cls(meta["encoder"], config_from_dict(RegionConfig, meta["regions"], where=str(meta_file)),
                   AlignmentHeads.from_pretrained(p / "heads"),
                   GranularityController.from_pretrained(p / "controller") if parts.get("controller") else None,
                   config_from_dict(StateConfig, meta["state"], where=str(meta_file)), meta.get("fixed_g", 0.5),
                   HallucinationDetector.from_pretrained(p / "detector") if parts.get("detector") else None,
                   objects, decoder, vocab, meta.get("chair_vocabulary", "synth"), meta.get("info", {}),
                   TrainingDomain.load(p, meta.get("domain")),
                   PairController.from_pretrained(p / "pair_controller") if parts.get("pair_controller") else None)
        pipe.path = p
        return pipe

    # ---- encoding ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """(T, Dt) encoder vectors of the texts."""
        return self.encoder.encode_texts(list(texts)).float()

    @torch.no_grad()
    def encode_images(self, images: Sequence[str | Path | Image.Image]):
        """Encoder features of raw images with the pipeline's region source, boxes chosen as extraction chooses
        them (:func:`dsanchor.features.extract.image_boxes`; a new image has no annotations): an
        :class:`~dsanchor.features.types.ImageFeatures` (ids 0..N-1, no objects). The methods that take images
        also take this, so an image encoded once can be asked several things."""
        from dsanchor.data.records import Sample
        from dsanchor.encoders.regions import pad_boxes
        from dsanchor.features.extract import image_boxes
        from dsanchor.features.types import ImageFeatures

        pil = [_open(im) for im in images]
        samples = [Sample(i, "", *im.size) for i, im in enumerate(pil)]
        padded = [pad_boxes(b, self.regions.max_regions)
                  for b in image_boxes(samples, pil, self.regions, self._region_detector)]
        boxes, mask = torch.stack([b for b, _ in padded]), torch.stack([m for _, m in padded])  # (N, R, 4), (N, R)
        pixels = torch.stack([self.encoder.transform(im) for im in pil])  # (N, 3, S, S)
        coarse, regions = self.encoder.encode_pixels(pixels, boxes, mask)
        n = len(pil)
        return ImageFeatures(torch.arange(n), coarse.float(), regions.float(), boxes, mask, [[] for _ in range(n)],
                             [None] * n)

    def _region_detector(self):
        """The region source's object detector, loaded on first use (only with ``regions.detector``)."""
        if self._detector_model is None:
            from dsanchor.encoders.detectors import RegionDetector

            self._detector_model = RegionDetector(self.regions)
        return self._detector_model

    def _features(self, images):
        """``images`` as ImageFeatures: encoded here, unless they already are (:meth:`encode_images`)."""
        from dsanchor.features.types import ImageFeatures

        return images if isinstance(images, ImageFeatures) else self.encode_images(images)

    # ---- granularity ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def choose_g(self, text: str | None = None, image: str | Path | Image.Image | None = None,
                 g: float | None = None) -> GChoice:
        """The g for a text query (``text``) or an image query (``image``: a file, a PIL image or the
        :meth:`encode_images` of one), and why (:class:`GChoice`)."""
        if (text is None) == (image is None):
            raise ConfigError("choose_g takes a text or an image query, not both or neither")
        if g is not None:
            return self._given(g)
        if image is not None:
            feats = self._features(image if not isinstance(image, (str, Path, Image.Image)) else [image])
            return self.choices(coarse_raw=feats.coarse)[0]
        return self.choices(text_raw=self.encode_texts([text]))[0]

    @staticmethod
    def _given(g: float) -> GChoice:
        if not 0.0 <= float(g) <= 1.0:
            raise ConfigError(f"g must lie in [0, 1], got {g}")
        return GChoice(float(g), "given")

    def choices(self, text_raw: torch.Tensor | None = None, coarse_raw: torch.Tensor | None = None) -> list[GChoice]:
        """The g of each of several text queries (their encoder vectors ``text_raw``) or image queries (their scene
        vectors ``coarse_raw``): the controller's, else the fixed g."""
        from dsanchor.state import query_states

        d = self.encoder_spec["dims"]
        n = (text_raw if text_raw is not None else coarse_raw).shape[0]
        if self.controller is None:
            return [GChoice(self.fixed_g, "fixed")] * n
        s_t, s_i = query_states(text_raw if text_raw is not None else torch.zeros(0, d["text"]),
                                coarse_raw if coarse_raw is not None else torch.zeros(0, d["coarse"]))
        state = s_t if text_raw is not None else s_i
        g = self.controller(state)
        codes = self.controller.code(state).tolist() if self.controller.config.codebook else [None] * n
        return [GChoice(float(v), "controller", c) for v, c in zip(g.tolist(), codes, strict=True)]

    # ---- what a user calls ------------------------------------------------------------------------------------

    def region_note(self) -> str | None:
        """A warning when new images will get other regions than the heads were trained on, else None."""
        if self.domain is not None and not self.domain.region_source.startswith("annotation"):
            return None  # the training images had no annotation boxes either: they got what new images get
        if self.regions.annotations and not self.regions.detector:
            return ("the heads were trained on annotation boxes, but an image without them gets class-agnostic "
                    "proposals (README 'Regions'); for images without boxes, train with --no-annotations or "
                    "--detector (`dsanchor run` and `demo`: --region-source proposals, their default)")
        return None

    def trained_on(self) -> str | None:
        """'synth (600 training images, annotation boxes)', or None for a pipeline saved without the record."""
        return None if self.domain is None else self.domain.describe()

    def image_notes(self, images) -> list[str | None]:
        """Per image (files, PIL images or their :meth:`encode_images`), one line when it looks out of the
        training domain (:mod:`dsanchor.domain`), else None; all None without a domain record."""
        feats = self._features(images)
        return [None] * len(feats) if self.domain is None else self.domain.image_notes(feats.coarse)

    def text_note(self, text: str) -> str | None:
        """One line when a text query looks unlike the training captions (:mod:`dsanchor.domain`), else None."""
        return None if self.domain is None else self.domain.text_note(self.encode_texts([text]))

    def index(self, images: str | Path | Sequence[str | Path], out: str | Path | None = None, **kwargs):
        """Index a folder (or list) of images for :meth:`search`; see :func:`dsanchor.image_index.build_index`."""
        return build_index(self, images, out, **kwargs)

    def search(self, query: str, index, k: int = 10, g: float | None = None, m: int = 100,
               per_pair: bool = False) -> list[Hit]:
        """The top ``k`` images of ``index`` for a text query, with their DSA scores and the g used.

        ``g`` overrides the controller; ``m`` is the depth of the faiss first stage that DSA re-ranks;
        ``per_pair`` re-ranks with the per-pair controller (a g per candidate, :mod:`dsanchor.pairs`) instead of
        the query's own g (it has not measured better than the fixed g: docs/results.md).
        """
        return self.search_with_choice(query, index, k, g, m, per_pair)[0]

    @torch.no_grad()
    def search_with_choice(self, query: str, index, k: int = 10, g: float | None = None,
                           m: int = 100, per_pair: bool = False) -> tuple[list[Hit], GChoice]:
        """:meth:`search`, also returning the :class:`GChoice` (g, its source and the query type)."""
        from dsanchor.retrieval import two_stage_search

        if not isinstance(query, str) or not query.strip():
            raise ConfigError("the query must be a non-empty string")
        raw = self.encode_texts([query])
        text = self.heads.encode_text(raw)
        if per_pair:
            if self.pair_controller is None:
                raise ConfigError("this pipeline has no per-pair controller (`dsanchor train` makes one in OUT/pair)")
            if g is not None:
                raise ConfigError("per_pair chooses a g per candidate; it cannot be combined with a given g")
            return self._search_per_pair(query, raw, text, index, k, m)
        choice = self._given(g) if g is not None else self.choices(text_raw=raw)[0]
        scores, idx = two_stage_search(text, index.joint, self.heads.pool_s.item(), choice.g, m=m, k=k,
                                       backend="faiss", index=index.faiss, compose=self._compose([query], index.joint))
        hits = [Hit(index.paths[int(i)], float(s), choice.g, r + 1)
                for r, (s, i) in enumerate(zip(scores[0].tolist(), idx[0].tolist(), strict=True))]
        return hits, choice

    def _search_per_pair(self, query: str, raw: torch.Tensor, text: torch.Tensor, index, k: int,
                         m: int) -> tuple[list[Hit], GChoice]:
        """Search with the per-pair controller (:mod:`dsanchor.pairs`): the faiss top ``m`` by scene vector, DSA at
        the controller's base g over them, then a g for each of its top-M candidates from the query and that
        image. Each hit carries its own g; the choice reports their mean."""
        from dsanchor.pairs import pair_g, pair_states
        from dsanchor.retrieval import anchored_scores, rerank_all, topk_search

        ctrl, s = self.pair_controller, self.heads.pool_s.item()
        _, cand = topk_search(text, index.joint.coarse, min(m, len(index)), "faiss", index=index.faiss)
        terms = rerank_all(text, index.joint, s, cand, self._compose([query], index.joint))  # (1, m)
        states = pair_states(terms, text, raw, index.joint, s, ctrl.config.base_g, ctrl.config.top_m,
                             compositions=self._compositions([query]), columns=cand)
        g = pair_g(ctrl(states), states.cand, terms.coarse.shape[1], ctrl.config.base_g)  # (1, m)
        scores = anchored_scores(terms, g)[0]
        top = scores.topk(min(k, scores.shape[0]))
        hits = [Hit(index.paths[int(cand[0, i])], float(v), float(g[0, i]), r + 1)
                for r, (v, i) in enumerate(zip(top.values.tolist(), top.indices.tolist(), strict=True))]
        return hits, GChoice(float(g[0, states.cand[0]].mean()), "per-pair controller")

    def _compositions(self, texts: Sequence[str]):
        """The embedded multi-phrase texts (:func:`dsanchor.relations.compositions`), or None when the heads score
        every caption by the single pool or none of ``texts`` names two phrases."""
        from dsanchor.relations import compositions

        if not self.heads.relation_config.mix:
            return None
        comp = compositions(list(texts))
        if len(comp) == 0:
            return None
        return comp.embed(lambda ps: self.heads.encode_text(self.encode_texts(ps)))

    def _compose(self, texts: Sequence[str], joint):
        """The :data:`~dsanchor.retrieval.Compose` of ``texts`` (one region pool per object phrase and the stated
        relation, :mod:`dsanchor.relations`) with the heads' fitted scorer, or None when none applies."""
        from dsanchor.relations import compose_fine

        relation = self.heads.relation_config
        comp = self._compositions(texts)
        if comp is None:
            return None
        s = self.heads.pool_s.item()
        return lambda terms, cand: terms._replace(
            fine=compose_fine(terms.fine, comp, joint, joint.boxes, s, relation, cand=cand))

    @torch.no_grad()
    def rank_captions(self, image: str | Path | Image.Image, captions: Sequence[str], g: float | None = None,
                      k: int | None = None, collapse: bool = True) -> tuple[list[tuple[str, float]], GChoice]:
        """Captions ranked for an image by DSA at the controller's g (or ``g``), best first, and the g.

        Args:
            k: keep the top ``k`` (all when None).
            collapse: show each statement once: drop a caption that is a near-duplicate of a higher-ranked one
                (identical normalised text, or text-encoder cosine >= 0.97; :mod:`dsanchor.duplicates`).
        """
        if not captions:
            raise ConfigError("rank_captions needs at least one caption")
        return self.rank_captions_embedded(image, self.encode_texts(captions), list(captions), g, k, collapse)

    @torch.no_grad()
    def rank_captions_embedded(self, image: str | Path | Image.Image, text_raw: torch.Tensor, captions: list[str],
                               g: float | None = None, k: int | None = None, collapse: bool = True,
                               facts: Sequence[dict | None] | None = None
                               ) -> tuple[list[tuple[str, float]], GChoice]:
        """:meth:`rank_captions` with the captions' encoder vectors ``text_raw`` (T, Dt) already computed;
        ``image`` may be the :meth:`encode_images` of one image. ``facts`` (T,): the fact each caption states
        (synth, CLEVR), so that ``collapse`` also shows each fact once."""
        from dsanchor.align.train import embed_images
        from dsanchor.duplicates import fact_key, near_duplicate_keep
        from dsanchor.retrieval import anchored_scores, pair_terms

        feats = self._features(image if not isinstance(image, (str, Path, Image.Image)) else [image])
        choice = self._given(g) if g is not None else self.choices(coarse_raw=feats.coarse)[0]
        text = self.heads.encode_text(text_raw.float())
        joint = embed_images(self.heads, feats)
        terms = pair_terms(text, joint, self.heads.pool_s.item())  # (T, 1)
        compose = self._compose(captions, joint)
        if compose is not None:
            terms = compose(terms, torch.zeros(len(captions), 1, dtype=torch.long))
        scores = anchored_scores(terms.t(), torch.tensor([[choice.g]]))[0]  # (T,)
        order = scores.argsort(descending=True).tolist()
        if collapse:
            keys = [fact_key(f) for f in facts] if facts is not None else None
            order = near_duplicate_keep(order, captions, text_raw, k, keys)
        elif k is not None:
            order = order[:k]
        return [(captions[i], float(scores[i])) for i in order], choice

    @torch.no_grad()
    def caption(self, images: Sequence[str | Path | Image.Image] | str | Path | Image.Image, g: float | None = None,
                beam: int = 3) -> list[dict[str, Any]]:
        """Captions of each image at the controller's g (or ``g``): per image ``{"g", "source", "query_type",
        "captions": {granularity: text}, "domain_note"}`` (``domain_note``: one line when the image looks out of
        the training domain, else None). ``images`` may be their :meth:`encode_images`."""
        from dsanchor.align.train import embed_images
        from dsanchor.captioning.decode import DecodeConfig, generate_caption_sets
        from dsanchor.captioning.tokens import build_token_pair

        if self.decoder is None:
            raise ConfigError("this pipeline has no caption decoder (train one with `dsanchor caption train`)")
        feats = self._features([images] if isinstance(images, (str, Path, Image.Image)) else images)
        choices = [self._given(g)] * len(feats) if g is not None else self.choices(coarse_raw=feats.coarse)
        joint = embed_images(self.heads, feats)
        pair = build_token_pair(joint.coarse, joint.regions, feats.boxes, joint.mask, self.decoder.positions)
        gs = torch.tensor([c.g for c in choices])
        sets = generate_caption_sets(self.decoder, self.vocab, pair, gs, DecodeConfig(beam=beam))
        notes = self.image_notes(feats)
        return [{"g": c.g, "source": c.source, "query_type": c.query_type, "captions": s, "domain_note": n}
                for c, s, n in zip(choices, sets, notes, strict=True)]


def save_pipeline(out: str | Path, features: str | Path, heads: str | Path, controller: str | Path | None = None,
                  detector: str | Path | None = None, decoder: str | Path | None = None, state=None,
                  fixed_g: float = 0.5, info: dict[str, Any] | None = None,
                  dataset: str | None = None) -> DSAPipeline:
    """Assemble a pipeline from the folders of a run (what ``dsanchor train`` and the demo call) and save it.

    The encoder and region configs come from the feature store's manifest, the object vocabulary from the
    store, the CHAIR vocabulary from its object names, and the record of what it was trained on
    (:func:`dsanchor.domain.fit_domain`: ``dataset`` (default: the store's format), its train images, their
    region source, and the out-of-domain references) from its train and val splits.
    """
    from dsanchor.align.heads import AlignmentHeads
    from dsanchor.captioning.decoder import CaptionDecoder
    from dsanchor.captioning.tokenizer import Vocabulary
    from dsanchor.config import config_from_dict
    from dsanchor.controller import GranularityController
    from dsanchor.domain import fit_domain
    from dsanchor.encoders.regions import RegionConfig
    from dsanchor.features.store import FeatureStore
    from dsanchor.hallucination import HallucinationDetector
    from dsanchor.hallucination.matrices import guess_vocabulary

    store = FeatureStore(features)
    man = store.manifest
    regions = config_from_dict(RegionConfig, man["regions"], where=str(Path(features) / "manifest.json"))
    ctrl = pair = None
    if controller is not None:
        c = Path(controller)
        ctrl = GranularityController.from_pretrained(c / "controller" if (c / "controller").is_dir() else c)
        if (c / "pair" / "pair_controller").is_dir():  # a PPO run that also trained the per-pair controller
            from dsanchor.pairs import PairController

            pair = PairController.from_pretrained(c / "pair" / "pair_controller")
    det = HallucinationDetector.from_pretrained(detector) if detector is not None else None
    dec = vocab = None
    if decoder is not None:
        dec, vocab = CaptionDecoder.from_pretrained(decoder), Vocabulary.load(decoder)
    pipe = DSAPipeline({k: man["encoder"][k] for k in ("name", "config", "dims")}, regions,
                       AlignmentHeads.from_pretrained(heads), ctrl, state, fixed_g, det,
                       store.object_vocabulary() if det is not None else None, dec, vocab,
                       guess_vocabulary(store.images()), {
                           "features": str(features), "heads": str(heads),
                           **{k: str(v) for k, v in (("controller", controller), ("detector", detector),
                                                     ("decoder", decoder)) if v is not None}, **(info or {})},
                       fit_domain(store, regions, dataset), pair)
    pipe.save_pretrained(out)
    return pipe


def load(path: str | Path) -> DSAPipeline:
    """Load a saved :class:`DSAPipeline` (``dsanchor.load("runs/demo/pipeline")``)."""
    return DSAPipeline.from_pretrained(path)


def _replace(pipe: DSAPipeline, **changes) -> DSAPipeline:
    """A copy of ``pipe`` with some parts replaced (tests use it to build misfits)."""
    kw = {"encoder": pipe.encoder_spec, "regions": pipe.regions, "heads": pipe.heads, "controller": pipe.controller,
          "state": pipe.state, "fixed_g": pipe.fixed_g, "detector": pipe.detector, "objects": pipe.objects,
          "decoder": pipe.decoder, "vocab": pipe.vocab, "vocabulary": pipe.vocabulary, "info": pipe.info,
          "domain": pipe.domain, "pair_controller": pipe.pair_controller}
    kw.update(changes)
    return DSAPipeline(**kw)

