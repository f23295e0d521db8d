import dataclasses

import numpy as np
import pytest
import torch
from stable_baselines3.common.env_checker import check_env

from dsanchor.retrieval import PairTerms
from dsanchor.rl.env import GranularityEnv, RewardConfig, action_to_g, clipped_reward
from dsanchor.rl.reward import AccuracyConfig, RetrievalReward
from dsanchor.rl.tune import TuneConfig, best_reward, run_parallel, run_study


def test_action_rescaling():
    assert action_to_g(np.array([-1.0])) == 0.0
    assert action_to_g(np.array([1.0])) == 1.0
    assert action_to_g(np.array([0.0])) == 0.5
    assert action_to_g(np.array([-3.0])) == 0.0 and action_to_g(np.array([7.0])) == 1.0
    assert action_to_g(0.5) == 0.75


def test_clipped_reward_hand_cases():
    cfg = RewardConfig(alpha=2.0, beta=1.0, clip_low=-1.0, clip_high=1.0)
    assert clipped_reward(1.0, 0.0, cfg) == 1.0  # 2.0 clipped
    assert clipped_reward(0.0, -0.5, cfg) == -0.5
    assert clipped_reward(0.25, -0.25, cfg) == 0.25
    assert clipped_reward(1.0, -1.0, RewardConfig(alpha=0.0, beta=1.0)) == -1.0  # alpha = 0: only hallucination
    assert clipped_reward(0.3, -1.0, RewardConfig(alpha=1.0, beta=0.0)) == pytest.approx(0.3)  # beta = 0
    assert clipped_reward(-5.0, 0.0, RewardConfig(alpha=1.0, beta=0.0, clip_low=-0.5)) == -0.5


def _terms():
    # 2 texts x 3 images. Text 0 belongs to image 0: coarse prefers image 1, fine prefers image 0.
    fine = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8]])
    coarse = torch.tensor([[0.2, 0.9, 0.1], [0.1, 0.0, 0.9]])
    cross = torch.zeros(2, 3)
    pos = torch.tensor([[True, False, False], [False, False, True]])
    return PairTerms(fine=fine, coarse=coarse, cross=cross, entropy=torch.zeros(2, 3)), pos


def test_retrieval_reward_hit_rank_and_hallucination():
    terms, pos = _terms()
    hall = torch.tensor([[0.0, 1.0, 0.5], [0.2, 0.0, 0.0]])
    named = torch.tensor([True, True])
    rr = RetrievalReward(terms, pos, hall, AccuracyConfig(k=1, dense=False), named)
    assert rr(0, 1.0) == (1.0, 1.0)  # fine: image 0 on top, every named object grounded: 1 - 2 * 0
    assert rr(0, 0.0) == (0.0, -1.0)  # coarse: image 1 on top, it lacks the caption's objects: 1 - 2 * 1
    dense = RetrievalReward(terms, pos, None, AccuracyConfig(k=1))  # the default: reciprocal rank
    assert dense(0, 0.0) == (0.5, 0.0)
    # image query 0 (pool index 2): captions ranked by score column 0; caption 0 is its positive
    assert rr(2, 1.0)[0] == 1.0
    assert len(rr) == 5


def test_a_caption_naming_nothing_is_not_rewarded_over_a_correct_object_caption():
    """Image query 0 can rank first a scene caption (names no object) or a correct object caption; the
    hallucination term must prefer the correct object caption, and both over a wrong one."""
    # 3 captions x 1 image: caption 0 a scene caption, caption 1 a correct object caption, caption 2 a wrong one
    fine = torch.tensor([[0.9], [0.1], [0.0]])  # g = 1 ranks the scene caption first
    coarse = torch.tensor([[0.0], [0.9], [0.1]])  # g = 0 ranks the correct object caption first
    terms = PairTerms(fine=fine, coarse=coarse, cross=torch.zeros(3, 1), entropy=torch.zeros(3, 1))
    pos = torch.tensor([[True], [True], [False]])  # both the scene and the object caption are true of it
    hall = torch.tensor([[0.0], [0.0], [1.0]])
    named = torch.tensor([False, True, True])
    rr = RetrievalReward(terms, pos, hall, AccuracyConfig(), named)
    scene_first, object_first = rr(3, 1.0), rr(3, 0.0)  # pool index 3 = image query 0
    assert scene_first[0] == object_first[0] == 1.0  # the same accuracy
    assert object_first[1] > scene_first[1] == 0.0  # naming nothing scores below a correct mention
    wrong_first = PairTerms(fine=torch.tensor([[0.0], [0.0], [0.9]]), coarse=torch.zeros(3, 1),
                            cross=torch.zeros(3, 1), entropy=torch.zeros(3, 1))
    assert RetrievalReward(wrong_first, pos, hall, AccuracyConfig(), named)(3, 1.0)[1] == -1.0 < scene_first[1]
    with pytest.raises(ValueError, match="names_object"):
        RetrievalReward(terms, pos, hall, AccuracyConfig())


def test_env_checks_and_is_deterministic():
    terms, pos = _terms()
    states = torch.randn(5, 4)
    rr = RetrievalReward(terms, pos, None, AccuracyConfig(k=1))
    env = GranularityEnv(states, rr, RewardConfig(), seed=3)
    check_env(env)
    a = [env.reset(seed=11)[1]["query"] for _ in range(1)] + [env.reset()[1]["query"] for _ in range(5)]
    b = [env.reset(seed=11)[1]["query"] for _ in range(1)] + [env.reset()[1]["query"] for _ in range(5)]
    assert a == b
    _, r, term, trunc, info = env.step(np.array([1.0], dtype=np.float32))
    assert term and not trunc and info["g"] == 1.0


@pytest.mark.slow
def test_tiny_ppo_beats_random_policy_and_resumes(tmp_path):
    from dsanchor.rl.ppo import PPOConfig, train_ppo

    torch.manual_seed(0)
    states = torch.randn(256, 4)
    target = torch.sigmoid(3 * states[:, 0]).numpy()

    def reward_model(q, g):
        return 1.0 - 2.0 * abs(g - target[q]), 0.0

    cfg = PPOConfig(timesteps=1536, n_envs=4, n_steps=128, batch_size=128, checkpoint_every=512)
    _, first = train_ppo(states, reward_model, RewardConfig(), cfg, tmp_path)
    assert first["resumed_from"] == 0
    # a rerun with more steps resumes from the newest checkpoint instead of starting over
    ctrl, info = train_ppo(states, reward_model, RewardConfig(), dataclasses.replace(cfg, timesteps=3072), tmp_path)
    assert info["resumed_from"] >= 1024 and info["timesteps"] >= 3072
    g = ctrl(states).detach().numpy()
    learned = np.mean([reward_model(q, g[q])[0] for q in range(256)])
    rng = np.random.default_rng(0)
    random = np.mean([reward_model(q, rng.uniform())[0] for q in range(256)])
    assert learned > random + 0.2
    assert (tmp_path / "controller" / "controller.safetensors").exists()
    # a checkpoint made with another reward is not resumed: one line, then a fresh start
    _, other = train_ppo(states, reward_model, RewardConfig(beta=0.9), cfg, tmp_path)
    assert other["resumed_from"] == 0
    _, again = train_ppo(states, reward_model, RewardConfig(beta=0.9), dataclasses.replace(cfg, timesteps=2048),
                         tmp_path)
    assert again["resumed_from"] >= 1024  # the same run resumes


@pytest.mark.slow
def test_ppo_with_a_codebook_learns_one_g_per_query_type(tmp_path):
    from dsanchor.rl.ppo import PPOConfig, train_ppo
    from dsanchor.state import query_states

    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(2, 6, generator=gen)
    kind = torch.arange(2).repeat_interleave(64)
    s_t, _ = query_states(centers[kind] + 0.05 * torch.randn(128, 6, generator=gen), torch.randn(1, 5))
    target = np.where(kind.numpy() == 0, 0.15, 0.85)  # the best g depends only on the query type

    def reward_model(q, g):
        return 1.0 - 2.0 * abs(g - target[q]), 0.0

    cfg = PPOConfig(timesteps=4096, n_envs=4, n_steps=128, batch_size=128, checkpoint_every=10**9)
    ctrl, _ = train_ppo(s_t, reward_model, RewardConfig(), cfg, tmp_path, codebook=2, text_dim=6)
    g = ctrl(s_t).detach()
    assert g[kind == 0].std() < 1e-6 and g[kind == 1].std() < 1e-6  # one g per type
    assert g[kind == 0].mean() < 0.4 and g[kind == 1].mean() > 0.6


def quadratic_objective():
    """Module level so spawned workers can build it."""
    return lambda r: -((r.beta - 0.4) ** 2) - (r.clip_high - 1.0) ** 2 - (r.clip_low + 0.5) ** 2


@pytest.mark.slow
def test_two_processes_share_one_sqlite_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    cfg = TuneConfig(trials=6, storage=url, study_name="shared", workers=2)
    study = run_parallel(quadratic_objective, cfg)
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(6))  # no collisions, nothing lost
    assert study.best_value <= 0
    more = run_study(quadratic_objective(), cfg, 2)
    assert len(more.trials) == 8
    assert all(t.params.keys() == {"ratio", "clip_low", "clip_high"} for t in more.trials)  # what PPO can feel
    best = best_reward(more)
    assert best.alpha == 1.0 and cfg.ratio_low <= best.beta <= cfg.ratio_high and best.clip_low < 0 < best.clip_high
