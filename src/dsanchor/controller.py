"""The granularity controller: a small MLP that maps a query's state to a distribution over g in [0, 1].

The state (built by :mod:`dsanchor.state`) aggregates both modalities: the query vector and summaries
of the first-stage candidates (see that module for the exact features and why). The controller owns
the state's normalisation statistics (``state_mean``, ``state_std`` buffers), so a saved controller is
self-contained: ``from_pretrained(dir)(raw_state)`` gives g.

Two output heads:

* ``"beta"``: g ~ Beta(a, b) with a, b = 1 + softplus(.); the mean is a / (a + b).
* ``"gaussian"``: the action a ~ N(mu, sigma) on [-1, 1] (clipped), g = (a + 1) / 2. The mean is
  (clip(mu, -1, 1) + 1) / 2. This is exactly what an SB3 PPO policy with a Box(-1, 1) action space
  and an environment that rescales the action computes, so a PPO policy exports to it without loss.
* ``"grid"``: a categorical distribution over the g values of ``ControllerConfig.grid`` (one logit each);
  g is the most probable one. A router trained by classification (:mod:`dsanchor.mllm.router`) uses it.

With ``codebook = k > 0`` the controller first maps a query state ``[text | image | direction]``
(:func:`dsanchor.state.query_states`) to the one-hot of its nearest text or image centroid (cosine),
so the MLP sees one of 2k query types. The centroids are buffers, fit by :meth:`fit_codebook` (spherical
k-means with k-means++ seeding) on the training queries, and saved with the weights.

Saved as safetensors + JSON config (``save_pretrained`` / ``from_pretrained``); loading never unpickles.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dsanchor.checkpoint import PretrainedMixin
from dsanchor.errors import ConfigError

__all__ = ["ControllerConfig", "GranularityController", "spherical_kmeans"]

CONFIG_NAME = "controller_config.json"
WEIGHTS_NAME = "controller.safetensors"


@dataclass
class ControllerConfig:
    state_dim: int = field(default=0, metadata={"help": "size of the state vector (set from the state builder)"})
    hidden: int = field(default=64, metadata={"help": "width of each hidden layer"})
    layers: int = field(default=2, metadata={"help": "number of hidden layers"})
    distribution: str = field(default="gaussian", metadata={
        "help": "output head: gaussian (PPO-exact), beta, or grid (a categorical over the g values of grid)"})
    init_log_std: float = field(default=-0.5, metadata={"help": "initial log std of the gaussian head"})
    codebook: int = field(default=0, metadata={"help": "query-type codebook size k (0: the MLP reads the state)"})
    text_dim: int = field(default=0, metadata={"help": "size of the text part of a query state (with a codebook)"})
    grid: list = field(default_factory=list, metadata={
        "help": "the g values of the grid head (distribution grid), ascending in [0, 1]; empty otherwise"})
    state_layout: dict = field(default_factory=dict, metadata={
        "help": "what the state holds, for states built elsewhere (MLLM controllers: "
                "dsanchor.integrations.state.StateLayout); empty for retrieval and captioning states"})


@torch.no_grad()
def spherical_kmeans(x: torch.Tensor, k: int, seed: int = 0, iters: int = 50) -> torch.Tensor:
    """k unit centroids of the rows of ``x`` (cosine k-means, k-means++ seeding). Returns (k, D).

    With fewer than k distinct rows, the remaining centroids repeat existing ones (they are never nearest
    first, so they stay unused).
    """
    x = nn.functional.normalize(x.float(), dim=-1)
    gen = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    if n == 0:
        raise ConfigError("cannot fit a codebook on zero queries")
    cent = [x[int(torch.randint(n, (1,), generator=gen))]]
    for _ in range(1, k):
        d = (1.0 - x @ torch.stack(cent).T).clamp_min(0).min(1).values  # cosine distance to the nearest
        p = d / d.sum() if d.sum() > 0 else torch.full((n,), 1.0 / n)
        cent.append(x[int(torch.multinomial(p, 1, generator=gen))])
    c = torch.stack(cent)
    for _ in range(iters):
        assign = (x @ c.T).argmax(1)
        new = torch.zeros_like(c).index_add_(0, assign, x)
        used = torch.bincount(assign, minlength=k) > 0
        new = torch.where(used.unsqueeze(1), nn.functional.normalize(new, dim=-1), c)
        if torch.allclose(new, c):
            break
        c = new
    return c


class GranularityController(PretrainedMixin, nn.Module):
    """MLP policy over the granularity g (DESIGN.md "Controller")."""

    config_class = ControllerConfig
    config_name = CONFIG_NAME
    weights_name = WEIGHTS_NAME
    display_name = "controller"
    made_by = "dsanchor train"

    def __init__(self, config: ControllerConfig):
        super().__init__()
        if config.state_dim <= 0:
            raise ConfigError("ControllerConfig.state_dim must be positive (the size of the state vector)")
        if config.distribution not in ("gaussian", "beta", "grid"):
            raise ConfigError(f"unknown controller distribution {config.distribution!r}; use 'gaussian', 'beta' "
                              f"or 'grid'")
        if (config.distribution == "grid") != bool(config.grid) or any(not 0 <= g <= 1 for g in config.grid):
            raise ConfigError("a grid controller needs grid = its g values in [0, 1] (and only it has a grid)")
        self.config = config
        in_dim = config.state_dim
        if config.codebook:
            image_dim = config.state_dim - config.text_dim - 1
            if config.codebook < 0 or config.text_dim <= 0 or image_dim <= 0:
                raise ConfigError(f"a codebook controller needs codebook > 0 and 0 < text_dim < state_dim - 1 "
                                  f"(a query state [text | image | direction]); got codebook={config.codebook}, "
                                  f"text_dim={config.text_dim}, state_dim={config.state_dim}")
            self.register_buffer("text_centroids", torch.zeros(config.codebook, config.text_dim))
            self.register_buffer("image_centroids", torch.zeros(config.codebook, image_dim))
            in_dim = 2 * config.codebook
        self.input_dim = in_dim
        dims = [in_dim] + [config.hidden] * config.layers
        blocks: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:], strict=False):
            blocks += [nn.Linear(d_in, d_out), nn.Tanh()]
        self.body = nn.Sequential(*blocks)
        n_out = {"gaussian": 1, "beta": 2, "grid": len(config.grid)}[config.distribution]
        self.head = nn.Linear(dims[-1], n_out)
        self.register_buffer("grid_values", torch.tensor([float(g) for g in config.grid]), persistent=False)
        self.log_std = nn.Parameter(torch.full((1,), float(config.init_log_std)))
        self.register_buffer("state_mean", torch.zeros(in_dim))
        self.register_buffer("state_std", torch.ones(in_dim))

    @torch.no_grad()
    def fit_codebook(self, states: torch.Tensor, seed: int = 0) -> None:
        """Fit the text and image centroids on training query states (rows with direction 0 / 1)."""
        if not self.config.codebook:
            raise ConfigError("this controller has no codebook (ControllerConfig.codebook = 0)")
        states = self._check(states)
        dt, k = self.config.text_dim, self.config.codebook
        is_image = states[:, -1] > 0.5
        for rows, part, buf in ((~is_image, slice(0, dt), self.text_centroids),
                                (is_image, slice(dt, -1), self.image_centroids)):
            if rows.any():
                buf.copy_(spherical_kmeans(states[rows, part], k, seed))

    @torch.no_grad()
    def fit_inputs(self, states: torch.Tensor, seed: int = 0) -> None:
        """Fit what the controller reads from training states: the codebook (if any) and the standardisation.

        One-hot codes are not standardised (mean 0, std 1): a code rare in training would otherwise be
        blown up at test time.
        """
        if self.config.codebook:
            self.fit_codebook(states, seed)
            self.set_normalization(torch.zeros(self.input_dim), torch.ones(self.input_dim))
        else:
            s = self._check(states).float()
            self.set_normalization(s.mean(0), s.std(0))

    def _check(self, state: torch.Tensor) -> torch.Tensor:
        if state.dim() != 2 or state.shape[1] != self.config.state_dim:
            raise ConfigError(f"controller expects states of shape (B, {self.config.state_dim}); "
                              f"got {tuple(state.shape)} (was it trained with another --state-kind or feature store?)")
        return state

    def code(self, state: torch.Tensor) -> torch.Tensor:
        """(B,) query type of each state: its nearest text centroid (0..k-1) or image centroid (k..2k-1).

        The nearest centroid by cosine is the argmax of the dot product (unit centroids; scaling the query
        does not change the argmax), so the query part needs no normalisation.
        """
        state = self._check(state)
        dt, k = self.config.text_dim, self.config.codebook
        if state.shape[0] == 1:  # one query, as at inference: its direction read on the host, one branch run
            is_image, n_image = None, int(state[0, -1].item() > 0.5)
        else:
            is_image = state[:, -1] > 0.5  # (B,)
            n_image = int(is_image.sum())
        # linear(x, c) is x @ c.T (the same matmul) in one call; (B, k) scores, argmax over the centroids
        if n_image == 0:  # text queries only
            return nn.functional.linear(state[:, :dt], self.text_centroids).argmax(1)
        code_i = nn.functional.linear(state[:, dt:-1], self.image_centroids).argmax(1) + k
        if n_image == state.shape[0]:  # image queries only
            return code_i
        code_t = nn.functional.linear(state[:, :dt], self.text_centroids).argmax(1)
        return torch.where(is_image, code_i, code_t)

    def encode(self, state: torch.Tensor) -> torch.Tensor:
        """What the MLP reads: the state itself, or with a codebook the (B, 2k) one-hot query type."""
        if not self.config.codebook:
            return self._check(state)
        return nn.functional.one_hot(self.code(state), 2 * self.config.codebook).to(self.state_mean.dtype)

    def _code_table(self) -> torch.Tensor:
        """(2k,) mean g of every query type, recomputed only when a parameter or buffer has changed."""
        key = self._tensor_key()
        if getattr(self, "_table_key", None) != key:
            eye = torch.eye(self.input_dim, dtype=self.state_mean.dtype)
            self._table = self._mean_g(self.head(self.body(self.normalize(eye))))
            self._table_key = key
        return self._table

    def _tensor_key(self) -> list[tuple[int, int]]:
        """(id, version) of every parameter and buffer of the module tree: changes with any of them.

        Read from the modules' own dicts: the generators behind ``parameters()`` and ``buffers()`` cost more
        than the whole codebook lookup, and this runs on every inference call.
        """
        key, stack = [], [self]
        while stack:
            module = stack.pop()
            for tensors in (module._parameters, module._buffers):
                key += [(id(t), t._version) for t in tensors.values() if t is not None]
            stack += [m for m in module._modules.values() if m is not None]
        return key

    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store the statistics used to standardise the encoded states (:meth:`encode`)."""
        self.state_mean.copy_(mean)
        self.state_std.copy_(std.clamp_min(1e-6))

    def normalize(self, encoded: torch.Tensor) -> torch.Tensor:
        return (encoded - self.state_mean) / self.state_std

    def _raw(self, state: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.normalize(self.encode(state))))  # (B, 1) or (B, 2)

    def distribution(self, state: torch.Tensor) -> torch.distributions.Distribution:
        """The distribution over the action: g itself for beta, the [-1, 1] action for gaussian, the index of
        the grid g for grid."""
        out = self._raw(state)
        if self.config.distribution == "grid":
            return torch.distributions.Categorical(logits=out)
        if self.config.distribution == "beta":
            conc = 1.0 + nn.functional.softplus(out)  # (B, 2)
            return torch.distributions.Beta(conc[:, 0], conc[:, 1])
        return torch.distributions.Normal(out[:, 0], self.log_std.exp().expand(out.shape[0]))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        """The mean g for each state. Args: state ``(B, state_dim)``. Returns ``(B,)`` in [0, 1].

        With a codebook and no gradient (inference), g is read from a table of the 2k query types.
        """
        if self.config.codebook and not torch.is_grad_enabled():
            return self._code_table().index_select(0, self.code(state))  # = table[code], fewer kernels
        return self._mean_g(self._raw(state))

    def _mean_g(self, out: torch.Tensor) -> torch.Tensor:
        """Mean g from the head's output (B, 1), (B, 2), or for grid (B, G): its most probable g."""
        if self.config.distribution == "grid":
            return self.grid_values.to(out.device)[out.argmax(1)]
        if self.config.distribution == "beta":
            conc = 1.0 + nn.functional.softplus(out)
            return conc[:, 0] / conc.sum(dim=1)
        return (out[:, 0].clamp(-1.0, 1.0) + 1.0) / 2.0
