"""PPO training of the granularity controller with stable-baselines3 (Schulman et al. 2017).

The policy is SB3's ``MlpPolicy`` with the controller's architecture (Tanh MLP, separate value net).
Its mean action, clipped to [-1, 1] and rescaled, is exactly a ``"gaussian"``
:class:`~dsanchor.controller.GranularityController`, so :func:`export_controller` copies the weights
and the environment's state statistics without approximation.

A run directory holds TensorBoard logs (``tb/``), periodic checkpoints (``checkpoints/``), the learning
curve (``learning_curve.json``) and the exported controller (``controller/``). Rerunning with the same
directory resumes from the newest checkpoint, but only when ``checkpoints/run.json`` records the same run:
the same PPO and reward configuration (the step budget aside), the same query states and the same reward
model (its :meth:`fingerprint`, which covers the split's relevance, scores and hallucination estimates).
Otherwise it says so in one line and starts afresh.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback
from stable_baselines3.common.vec_env import DummyVecEnv
from torch import nn

from dsanchor.controller import ControllerConfig, GranularityController
from dsanchor.files import write_json
from dsanchor.progress import progress_bar
from dsanchor.rl.env import GranularityEnv, RewardConfig, RewardModel

__all__ = ["PPOConfig", "train_ppo", "controller_for", "export_controller", "run_fingerprint", "CurveCallback",
           "ProgressCallback"]

log = logging.getLogger(__name__)


@dataclass
class PPOConfig:
    timesteps: int = field(default=65_536, metadata={"help": "total environment steps"})
    n_envs: int = field(default=8, metadata={"help": "vectorised environments"})
    n_steps: int = field(default=128, metadata={"help": "steps per environment per rollout"})
    batch_size: int = field(default=256, metadata={"help": "PPO minibatch size"})
    n_epochs: int = field(default=10, metadata={"help": "PPO epochs per rollout"})
    learning_rate: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    ent_coef: float = field(default=0.0, metadata={"help": "entropy bonus"})
    clip_range: float = field(default=0.2, metadata={"help": "PPO clip range"})
    hidden: int = field(default=64, metadata={"help": "width of the policy and value MLPs"})
    layers: int = field(default=2, metadata={"help": "hidden layers of the policy and value MLPs"})
    log_std_init: float = field(default=-0.5, metadata={"help": "initial log std of the action"})
    checkpoint_every: int = field(default=5_000, metadata={"help": "steps between checkpoints"})
    seed: int = field(default=0, metadata={"help": "random seed"})


class CurveCallback(BaseCallback):
    """Records the mean reward (and mean g) of each rollout."""

    def __init__(self, path: Path, curve: list[dict]):
        super().__init__()
        self.path, self.curve, self._r, self._g = path, curve, [], []

    def _on_step(self) -> bool:
        self._r.extend(np.asarray(self.locals["rewards"]).tolist())
        self._g.extend(i.get("g", np.nan) for i in self.locals["infos"])
        return True

    def _on_rollout_end(self) -> None:
        if self._r:
            self.curve.append({"timesteps": int(self.num_timesteps), "mean_reward": float(np.mean(self._r)),
                               "mean_g": float(np.nanmean(self._g))})
            self.logger.record("dsa/mean_g", float(np.nanmean(self._g)))
        self._r, self._g = [], []
        write_json(self.path, self.curve, indent=None)


class ProgressCallback(BaseCallback):
    """A progress bar over PPO's timesteps (:func:`dsanchor.progress.progress_bar`); reads nothing else."""

    def __init__(self, total: int, done: int):
        super().__init__()
        self.total, self.done, self.bar = total, done, None

    def _on_training_start(self) -> None:
        self.bar = progress_bar(total=self.total, initial=self.done, desc="PPO", unit="step")

    def _on_step(self) -> bool:
        self.bar.update(self.training_env.num_envs)
        return True

    def _on_training_end(self) -> None:
        self.bar.close()


def run_fingerprint(states: torch.Tensor, reward_model: RewardModel, reward: RewardConfig, config: PPOConfig,
                    codebook: int, text_dim: int) -> str:
    """What a checkpoint must share to be resumed: everything that changes training but the step budget."""
    h = hashlib.sha256(states.detach().float().contiguous().numpy().tobytes())
    fp = getattr(reward_model, "fingerprint", None)
    cfg = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("timesteps", "checkpoint_every")}
    h.update(json.dumps({"ppo": cfg, "reward": dataclasses.asdict(reward), "codebook": codebook,
                         "text_dim": text_dim, "model": fp() if fp else type(reward_model).__name__},
                        sort_keys=True).encode())
    return h.hexdigest()[:16]


def _resumable(ckpt_dir: Path, fingerprint: str) -> None:
    """Keep the checkpoints only if they were made by the same run; else clear them and say so."""
    record = ckpt_dir / "run.json"
    old = json.loads(record.read_text()).get("fingerprint") if record.is_file() else None
    if any(ckpt_dir.glob("ppo_*_steps.zip")) and old != fingerprint:
        print(f"PPO: checkpoints in {ckpt_dir} come from another run (config, states or reward differ); "
              "starting afresh", flush=True)
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    write_json(record, {"fingerprint": fingerprint}, indent=None)


def _latest_checkpoint(ckpt_dir: Path) -> tuple[Path | None, int]:
    best, steps = None, 0
    for p in ckpt_dir.glob("ppo_*_steps.zip"):
        m = re.search(r"_(\d+)_steps", p.name)
        if m and int(m.group(1)) > steps:
            best, steps = p, int(m.group(1))
    return best, steps


def controller_for(states: torch.Tensor, config: PPOConfig, codebook: int = 0, text_dim: int = 0,
                   state_layout: dict | None = None) -> GranularityController:
    """A controller shaped like the PPO policy, its inputs (codebook, standardisation) fit on ``states``."""
    ctrl = GranularityController(ControllerConfig(state_dim=int(states.shape[1]), hidden=config.hidden,
                                                  layers=config.layers, distribution="gaussian",
                                                  init_log_std=config.log_std_init, codebook=codebook,
                                                  text_dim=text_dim, state_layout=dict(state_layout or {})))
    ctrl.fit_inputs(states, config.seed)
    return ctrl


def export_controller(model: PPO, ctrl: GranularityController) -> GranularityController:
    """Copy the PPO policy's mean action into ``ctrl`` (from :func:`controller_for`; exact, see module docstring)."""
    pol = model.policy
    src = [m for m in pol.mlp_extractor.policy_net if isinstance(m, nn.Linear)]
    dst = [m for m in ctrl.body if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for s, d in zip(src, dst, strict=True):
            d.weight.copy_(s.weight)
            d.bias.copy_(s.bias)
        ctrl.head.weight.copy_(pol.action_net.weight)
        ctrl.head.bias.copy_(pol.action_net.bias)
        ctrl.log_std.copy_(pol.log_std.view(-1)[:1])
    return ctrl.eval()


def train_ppo(states: torch.Tensor, reward_model: RewardModel, reward: RewardConfig, config: PPOConfig,
              out_dir: str | Path, progress: bool = True, codebook: int = 0,
              text_dim: int = 0, state_layout: dict | None = None) -> tuple[GranularityController, dict]:
    """Train PPO on a query pool and export the controller to ``out_dir/controller``.

    Args:
        states: (Q, S) raw states of the training queries.
        reward_model: (R_acc, R_hall) of a query at a g.
        progress: a bar over the timesteps, with time left (on a terminal).
        codebook, text_dim: a query-type codebook of this size over query states whose text part has
            ``text_dim`` columns (:mod:`dsanchor.state`); the policy then sees the one-hot query type.
        state_layout: recorded in the exported controller's config (MLLM states,
            :class:`dsanchor.integrations.state.StateLayout`).
    Returns:
        The controller and an info dict (training time, steps, learning curve path).
    """
    out = Path(out_dir)
    _resumable(out / "checkpoints", run_fingerprint(states, reward_model, reward, config, codebook, text_dim))
    ctrl = controller_for(states, config, codebook, text_dim, state_layout)
    with torch.no_grad():
        obs = ctrl.encode(states.float())  # what the policy reads; the env standardises it like ctrl does

    def make(i: int):
        return lambda: GranularityEnv(obs, reward_model, reward, ctrl.state_mean, ctrl.state_std, seed=config.seed + i)

    venv = DummyVecEnv([make(i) for i in range(config.n_envs)])
    venv.seed(config.seed)
    ckpt, done_steps = _latest_checkpoint(out / "checkpoints")
    if ckpt is not None:
        log.info("resuming PPO from %s (%d steps)", ckpt, done_steps)
        model = PPO.load(ckpt, env=venv, device="cpu")
    else:
        torch.manual_seed(config.seed)
        model = PPO("MlpPolicy", venv, learning_rate=config.learning_rate, n_steps=config.n_steps,
                    batch_size=config.batch_size, n_epochs=config.n_epochs, gamma=0.0, gae_lambda=1.0,
                    clip_range=config.clip_range, ent_coef=config.ent_coef, seed=config.seed, device="cpu",
                    tensorboard_log=str(out / "tb"), verbose=0,
                    policy_kwargs=dict(net_arch=dict(pi=[config.hidden] * config.layers,
                                                     vf=[config.hidden] * config.layers),
                                       activation_fn=nn.Tanh, log_std_init=config.log_std_init))
    curve_path = out / "learning_curve.json"
    curve = json.loads(curve_path.read_text()) if (ckpt is not None and curve_path.exists()) else []
    callbacks = CallbackList([
        CheckpointCallback(max(config.checkpoint_every // config.n_envs, 1), str(out / "checkpoints"), "ppo"),
        CurveCallback(curve_path, curve),
        *([ProgressCallback(config.timesteps, done_steps)] if progress else []),
    ])
    t0 = time.perf_counter()
    remaining = max(config.timesteps - done_steps, 0)
    if remaining:
        model.learn(remaining, callback=callbacks, reset_num_timesteps=ckpt is None, progress_bar=False,
                    tb_log_name="ppo")
    elapsed = time.perf_counter() - t0
    ctrl = export_controller(model, ctrl)
    ctrl.save_pretrained(out / "controller")
    info = {"train_time_s": elapsed, "timesteps": int(model.num_timesteps), "resumed_from": done_steps,
            "learning_curve": str(curve_path)}
    write_json(out / "train_info.json", info)
    return ctrl, info
