"""The per-pair controller: g for each (text query, candidate image) of the re-ranking stage.

The DSA proposal's controller reads the text and the image. For a text query over a gallery the image is the
candidate being scored, so here g is chosen per pair: a first stage ranks the gallery by DSA at a base g (the
``fixed_best`` g chosen on val), and the controller picks a g for each of the top ``top_m`` candidates from the
query and that candidate; every other image keeps the base g. The ranking is then exact over the whole gallery.

The state of a pair (:data:`PAIR_FEATURES`, standardised on the training pairs) is the query's type (the one-hot
of the nearest of ``codebook`` text centroids, fit by spherical k-means on the training queries, as the
query-only controller reads it) and what the candidate looks like to this query: its coarse, fine and cross
scores and their difference, the attention entropy over its regions, its coarse and fine scores standardised
over the query's top-M (how it compares with the other candidates), its rank in the first stage and by coarse
score alone, the layout of the regions the query attends to (the attention-weighted box centre and size), and
whether the query names several object phrases and a relation (:mod:`dsanchor.relations`). The candidate's
coarse vector itself is left out: 256 more inputs for ~1,000 training queries overfit.

Two ways to train the same network (:class:`PairController`), so the comparison is fair:

* :func:`train_pair_gate`: plain gradient descent on the multi-positive InfoNCE of the anchored scores over the
  whole training gallery (the scores are differentiable in g);
* :func:`train_pair_ppo`: PPO (stable-baselines3) with a vector action, one g per top-M candidate, rewarded by
  ``clip(alpha * R_acc + beta * R_hall)`` of the re-ranked list (:class:`dsanchor.rl.reward.RetrievalReward`:
  the reciprocal rank of the first true image, and the hallucination of the top-1 image). The policy shares one
  per-pair MLP over the M candidates (:class:`PairPolicy`), so the exported controller scores any M.

Only text-to-image queries get a per-pair g; image-to-text keeps the base g.

The per-query oracle is no upper bound for a per-pair g: choosing g per pair can rank a true image first in
queries where no single g does. No cheap bound exists (the best per-pair choice is a combinatorial search over
the top-M), so none is reported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from dsanchor.align.loss import multi_positive_infonce
from dsanchor.checkpoint import PretrainedMixin
from dsanchor.controller import spherical_kmeans
from dsanchor.errors import ConfigError
from dsanchor.gate import GateConfig
from dsanchor.relations import Compositions
from dsanchor.retrieval import PairTerms, anchored_scores
from dsanchor.rl.env import QueryPoolEnv, clipped_reward

__all__ = ["PAIR_FEATURES", "PairControllerConfig", "PairController", "PairStates", "pair_states", "pair_g",
           "pair_scores", "PairGateConfig", "train_pair_gate", "PairPPOConfig", "train_pair_ppo", "PairEnv",
           "pair_ppo_model", "export_pair_controller"]

PAIR_FEATURES: tuple[str, ...] = (
    "coarse", "fine", "cross", "entropy", "fine_minus_coarse", "coarse_z", "fine_z", "first_stage_rank",
    "coarse_rank", "attended_x", "attended_y", "attended_w", "attended_h", "phrases", "relation")
_REGION_ELEMENTS = 1 << 24  # region values gathered per chunk of queries, ~64 MB of float32


@dataclass
class PairControllerConfig:
    top_m: int = field(default=20, metadata={"help": "candidates per text query that get their own g"})
    codebook: int = field(default=8, metadata={"help": "query types (text centroids) the controller reads"})
    text_dim: int = field(default=0, metadata={"help": "size of the text encoder's vectors (set from the data)"})
    hidden: int = field(default=64, metadata={"help": "width of each hidden layer"})
    layers: int = field(default=2, metadata={"help": "number of hidden layers"})
    base_g: float = field(default=0.5, metadata={"help": "g of the first stage and of pairs outside the top-M "
                                                         "(set to fixed_best's g on val)"})
    init_log_std: float = field(default=-0.5, metadata={"help": "initial log std of PPO's gaussian action"})


class PairStates(NamedTuple):
    """The top-M candidates of every text query and the raw state of each pair."""

    cand: torch.Tensor  # (T, M) gallery indices, first-stage order
    features: torch.Tensor  # (T, M, F) raw pair features (PAIR_FEATURES)
    text_raw: torch.Tensor  # (T, Dt) the queries' encoder vectors (their type is read from these)


class PairController(PretrainedMixin, nn.Module):
    """MLP over [query type one-hot | standardised pair features] -> g in [0, 1] (the gaussian mean, clipped)."""

    config_class = PairControllerConfig
    config_name = "pair_controller_config.json"
    weights_name = "pair_controller.safetensors"
    display_name = "per-pair controller"
    made_by = "dsanchor train --pair"

    def __init__(self, config: PairControllerConfig):
        super().__init__()
        if config.text_dim <= 0 or config.codebook <= 0 or config.top_m <= 0:
            raise ConfigError("PairControllerConfig needs text_dim, codebook and top_m > 0")
        self.config = config
        f = len(PAIR_FEATURES)
        self.input_dim = config.codebook + f
        self.register_buffer("text_centroids", torch.zeros(config.codebook, config.text_dim))
        self.register_buffer("feature_mean", torch.zeros(f))
        self.register_buffer("feature_std", torch.ones(f))
        dims = [self.input_dim] + [config.hidden] * config.layers
        blocks: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
            blocks += [nn.Linear(d_in, d_out), nn.Tanh()]
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(dims[-1], 1)

    @torch.no_grad()
    def fit_inputs(self, states: PairStates, seed: int = 0) -> None:
        """Fit the query-type centroids and the feature standardisation on training pairs."""
        self.text_centroids.copy_(spherical_kmeans(states.text_raw, self.config.codebook, seed))
        flat = states.features.reshape(-1, states.features.shape[-1])
        self.feature_mean.copy_(flat.mean(0))
        self.feature_std.copy_(flat.std(0).clamp_min(1e-6))

    def inputs(self, states: PairStates) -> torch.Tensor:
        """(T, M, k + F) what the network reads."""
        t = nn.functional.normalize(states.text_raw.float(), dim=-1)
        kind = nn.functional.one_hot((t @ self.text_centroids.T).argmax(1), self.config.codebook).float()
        feats = (states.features - self.feature_mean) / self.feature_std
        return torch.cat([kind.unsqueeze(1).expand(-1, feats.shape[1], -1), feats], dim=-1)

    def mean_action(self, x: torch.Tensor) -> torch.Tensor:
        """The unclipped mean action of inputs ``x`` (..., k + F) -> (...)."""
        return self.head(self.body(x)).squeeze(-1)

    def forward(self, states: PairStates) -> torch.Tensor:
        """(T, M) g of every pair."""
        return (self.mean_action(self.inputs(states)).clamp(-1.0, 1.0) + 1.0) / 2.0


# ---- states -------------------------------------------------------------------------------------------------

def _attended_boxes(text: torch.Tensor, joint, pool_s: float, cand: torch.Tensor) -> torch.Tensor:
    """(T, M, 4) the attention-weighted centre x, y and size w, h of each candidate's regions for its query."""
    r, d = joint.regions.shape[1], joint.regions.shape[2]
    step = max(1, _REGION_ELEMENTS // max(cand.shape[1] * r * d, 1))
    out = []
    for a in range(0, text.shape[0], step):
        c = cand[a:a + step]
        s_r = torch.einsum("qd,qmrd->qmr", text[a:a + step], joint.regions[c])
        w = torch.softmax((pool_s * s_r).masked_fill(~joint.mask[c], float("-inf")), -1).nan_to_num(0.0)
        b = joint.boxes[c] if joint.boxes is not None else torch.zeros(*c.shape, s_r.shape[-1], 4)  # (q, M, R, 4)
        cxcy = torch.cat([b[..., :2] + b[..., 2:] / 2, b[..., 2:]], dim=-1)
        out.append(torch.einsum("qmr,qmrk->qmk", w, cxcy))
    return torch.cat(out) if out else torch.zeros(0, cand.shape[1], 4)


def _zscore(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True).clamp_min(1e-6)


def _rank_within(x: torch.Tensor) -> torch.Tensor:
    """(T, M) rank (0 = highest) of each entry within its row, divided by M."""
    return x.argsort(1, descending=True).argsort(1).float() / x.shape[1]


@torch.no_grad()
def pair_states(terms: PairTerms, text: torch.Tensor, text_raw: torch.Tensor, joint, pool_s: float,
                base_g: float, top_m: int, compositions: Compositions | None = None,
                columns: torch.Tensor | None = None) -> PairStates:
    """The top-M candidates of each text query by DSA at ``base_g`` and the state of each pair.

    Args:
        terms: (T, N) pair terms (with the compositional fine score where the view has it). text: (T, D) the
            queries in the joint space. text_raw: (T, Dt) their encoder vectors. joint: the gallery.
        compositions: the multi-phrase queries (rows of ``terms``), for the phrase and relation inputs.
        columns: (T, N') when ``terms`` holds each query's own first-stage candidates (re-ranking), the gallery
            index of each column; None when the columns are the gallery.
    Returns:
        states whose ``cand`` index the columns of ``terms``.
    """
    m = min(top_m, terms.coarse.shape[1])
    cand = anchored_scores(terms, base_g).topk(m, dim=1).indices  # (T, M), first-stage order
    where = cand if columns is None else columns.gather(1, cand)  # gallery indices
    pick = [x.gather(1, cand) for x in terms]  # coarse, fine, cross, entropy (T, M)
    coarse, fine, cross, ent = pick
    t = coarse.shape[0]
    phrases, relation = torch.zeros(t), torch.zeros(t)
    if compositions is not None and len(compositions):
        counts = torch.bincount(compositions.phrase_of, minlength=len(compositions)).float()
        phrases[compositions.rows] = counts - 1
        relation[compositions.rows] = (compositions.relation >= 0).float()
    first = torch.arange(m, dtype=torch.float32).expand(t, m) / m
    feats = torch.stack([coarse, fine, cross, ent, fine - coarse, _zscore(coarse), _zscore(fine), first,
                         _rank_within(coarse), *_attended_boxes(text, joint, pool_s, where).unbind(-1),
                         phrases.unsqueeze(1).expand(t, m), relation.unsqueeze(1).expand(t, m)], dim=-1)
    return PairStates(cand, feats.float(), text_raw.float())


def pair_g(pair_values: torch.Tensor, cand: torch.Tensor, n_images: int, base_g: float) -> torch.Tensor:
    """(T, N) g of every (query, image): ``pair_values`` (T, M) on the candidates, ``base_g`` elsewhere."""
    g = torch.full((cand.shape[0], n_images), float(base_g), dtype=pair_values.dtype)
    return g.scatter(1, cand, pair_values)


def pair_scores(terms: PairTerms, controller: PairController, states: PairStates) -> torch.Tensor:
    """(T, N) DSA scores with the controller's g on each query's top-M and the base g elsewhere."""
    g = pair_g(controller(states), states.cand, terms.coarse.shape[1], controller.config.base_g)
    return anchored_scores(terms, g)


# ---- gradient gate ------------------------------------------------------------------------------------------

@dataclass
class PairGateConfig(GateConfig):
    """The query-only gate's settings (:class:`dsanchor.gate.GateConfig`), on minibatches of text queries."""

    steps: int = field(default=300, metadata={"help": "gradient steps of the per-pair gate"})
    batch_queries: int = field(default=256, metadata={"help": "text queries per step"})


def train_pair_gate(terms: PairTerms, relevant: torch.Tensor, states: PairStates, logit_scale: float,
                    config: PairControllerConfig, train: PairGateConfig) -> tuple[PairController, dict]:
    """The per-pair controller trained by gradient descent on the multi-positive InfoNCE of its anchored scores
    over the whole training gallery (text-to-image)."""
    torch.manual_seed(train.seed)
    ctrl = PairController(config)
    ctrl.fit_inputs(states, train.seed)
    opt = torch.optim.Adam(ctrl.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    x = ctrl.inputs(states)
    gen = torch.Generator().manual_seed(train.seed)
    t0 = time.perf_counter()
    loss = torch.tensor(float("nan"))
    for _ in range(train.steps):
        rows = torch.randperm(x.shape[0], generator=gen)[:train.batch_queries]
        g_pair = (torch.tanh(ctrl.mean_action(x[rows])) + 1.0) / 2.0  # a smooth stand-in for the clip in training
        g = pair_g(g_pair, states.cand[rows], terms.coarse.shape[1], config.base_g)
        loss = multi_positive_infonce(logit_scale * anchored_scores(terms.index(rows), g), relevant[rows], "lse")
        opt.zero_grad()
        loss.backward()
        opt.step()
    ctrl.eval()
    return ctrl, {"train_time_s": time.perf_counter() - t0, "final_loss": float(loss.detach())}


# ---- PPO ----------------------------------------------------------------------------------------------------

@dataclass
class PairPPOConfig:
    timesteps: int = field(default=16_384, metadata={"help": "environment steps (one text query each)"})
    n_envs: int = field(default=8, metadata={"help": "vectorised environments"})
    n_steps: int = field(default=128, metadata={"help": "steps per environment per rollout"})
    batch_size: int = field(default=256, metadata={"help": "PPO minibatch size"})
    n_epochs: int = field(default=10, metadata={"help": "PPO epochs per rollout"})
    learning_rate: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    clip_range: float = field(default=0.2, metadata={"help": "PPO clip range"})
    seed: int = field(default=0, metadata={"help": "random seed"})


class PairEnv(QueryPoolEnv):
    """One-step episodes: a text query's top-M pair states in, one g per candidate out (Box(-1, 1), rescaled to
    [0, 1] here), reward ``clip(alpha * R_acc + beta * R_hall)`` of the re-ranked gallery."""

    def __init__(self, obs: np.ndarray, cand: np.ndarray, n_images: int, base_g: float, reward_model,
                 reward, seed: int = 0):
        super().__init__(obs, seed)
        self._cand, self._n, self._base = cand, n_images, float(base_g)
        self._reward_model, self._reward = reward_model, reward
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(cand.shape[1],), dtype=np.float32)

    def step(self, action):
        g_pair = (np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0) + 1.0) / 2.0
        g = np.full(self._n, self._base)
        g[self._cand[self._q]] = g_pair
        r_acc, r_hall = self._reward_model(self._q, g)
        info = {"query": self._q, "g": float(g_pair.mean()), "r_acc": r_acc, "r_hall": r_hall}
        return self._obs[self._q], clipped_reward(r_acc, r_hall, self._reward), True, False, info


class _PairExtractor(nn.Module):
    """SB3's mlp_extractor for flat (M * F) observations: one MLP per pair (shared over the M pairs) for the
    policy, and a per-pair MLP averaged over the pairs for the value."""

    def __init__(self, m: int, f: int, hidden: int, layers: int):
        super().__init__()
        self.m, self.f = m, f

        def mlp() -> nn.Sequential:
            dims = [f] + [hidden] * layers
            return nn.Sequential(*[x for a, b in zip(dims[:-1], dims[1:], strict=True) for x in (nn.Linear(a, b),
                                                                                                  nn.Tanh())])

        self.policy_net, self.value_net = mlp(), mlp()
        self.latent_dim_pi, self.latent_dim_vf = m * hidden, hidden

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_actor(obs), self.forward_critic(obs)

    def forward_actor(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy_net(obs.view(-1, self.m, self.f)).flatten(1)

    def forward_critic(self, obs: torch.Tensor) -> torch.Tensor:
        return self.value_net(obs.view(-1, self.m, self.f)).mean(1)


class _PerPairHead(nn.Module):
    """The action mean of each pair from its own latent: (B, M * H) -> (B, M), one Linear(H, 1) shared."""

    def __init__(self, m: int, hidden: int):
        super().__init__()
        self.m = m
        self.linear = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.linear.weight, gain=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.linear(latent.view(latent.shape[0], self.m, -1)).squeeze(-1)


def _pair_policy_class():
    from stable_baselines3.common.policies import ActorCriticPolicy

    class PairPolicy(ActorCriticPolicy):
        """SB3 actor-critic whose action mean is one shared per-pair MLP (see :class:`_PairExtractor`)."""

        def __init__(self, *args, pair_m: int = 1, pair_f: int = 1, hidden: int = 64, layers: int = 2, **kwargs):
            self._pair = (pair_m, pair_f, hidden, layers)
            super().__init__(*args, **kwargs)

        def _build_mlp_extractor(self) -> None:
            self.mlp_extractor = _PairExtractor(*self._pair)

        def _build(self, lr_schedule) -> None:
            super()._build(lr_schedule)
            self.action_net = _PerPairHead(self._pair[0], self._pair[2])
            self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    return PairPolicy


def export_pair_controller(model, ctrl: PairController) -> PairController:
    """Copy a trained :class:`PairPolicy`'s per-pair mean action into ``ctrl`` (exact: the same layers)."""
    pol = model.policy
    with torch.no_grad():
        src = [layer for layer in pol.mlp_extractor.policy_net if isinstance(layer, nn.Linear)]
        dst = [layer for layer in ctrl.body if isinstance(layer, nn.Linear)]
        for s, d in zip(src, dst, strict=True):
            d.weight.copy_(s.weight)
            d.bias.copy_(s.bias)
        ctrl.head.weight.copy_(pol.action_net.linear.weight)
        ctrl.head.bias.copy_(pol.action_net.linear.bias)
    return ctrl.eval()


def pair_ppo_model(venv, config: PairControllerConfig, ppo: PairPPOConfig, m: int, f: int):
    """The SB3 PPO model of the per-pair controller on ``venv`` (observations M * F, actions M)."""
    from stable_baselines3 import PPO

    return PPO(_pair_policy_class(), venv, learning_rate=ppo.learning_rate, n_steps=ppo.n_steps,
               batch_size=ppo.batch_size, n_epochs=ppo.n_epochs, gamma=0.0, gae_lambda=1.0,
               clip_range=ppo.clip_range, seed=ppo.seed, device="cpu", verbose=0,
               policy_kwargs=dict(pair_m=m, pair_f=f, hidden=config.hidden, layers=config.layers,
                                  log_std_init=config.init_log_std))


def train_pair_ppo(terms: PairTerms, states: PairStates, reward_model, reward, config: PairControllerConfig,
                   ppo: PairPPOConfig, out_dir: str | Path, progress: bool = True) -> tuple[PairController, dict]:
    """PPO of the per-pair controller on the training text queries; exports it to ``out_dir/pair_controller``.

    Args:
        terms: (T, N) pair terms of the training split. states: :func:`pair_states` of its text queries.
        reward_model: (R_acc, R_hall) of text query q at per-image g (N,)
            (:class:`~dsanchor.rl.reward.RetrievalReward`). reward: alpha, beta and the clip
            (:class:`~dsanchor.rl.env.RewardConfig`).
    """
    from stable_baselines3.common.vec_env import DummyVecEnv

    from dsanchor.rl.ppo import CurveCallback, ProgressCallback

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(ppo.seed)
    ctrl = PairController(config)
    ctrl.fit_inputs(states, ppo.seed)
    with torch.no_grad():
        x = ctrl.inputs(states)  # (T, M, k + F)
    m, f = x.shape[1], x.shape[2]
    obs = x.reshape(x.shape[0], -1).numpy().astype(np.float32)
    cand = states.cand.numpy()
    n_images = int(terms.coarse.shape[1])

    def make(i: int):
        return lambda: PairEnv(obs, cand, n_images, config.base_g, reward_model, reward, seed=ppo.seed + i)

    venv = DummyVecEnv([make(i) for i in range(ppo.n_envs)])
    venv.seed(ppo.seed)
    model = pair_ppo_model(venv, config, ppo, m, f)
    curve: list[dict] = []
    callbacks = [CurveCallback(out / "learning_curve.json", curve)]
    if progress:
        callbacks.append(ProgressCallback(ppo.timesteps, 0))
    t0 = time.perf_counter()
    model.learn(ppo.timesteps, callback=callbacks, progress_bar=False)
    elapsed = time.perf_counter() - t0
    export_pair_controller(model, ctrl).save_pretrained(out / "pair_controller")
    info = {"train_time_s": elapsed, "timesteps": int(model.num_timesteps), "top_m": m,
            "learning_curve": str(out / "learning_curve.json"),
            "final_mean_reward": curve[-1]["mean_reward"] if curve else None}
    return ctrl, info

