"""The per-pair controller (dsanchor.pairs): state, gradient gate, PPO with a per-pair policy, export."""

import numpy as np
import torch

from dsanchor.align.heads import JointFeatures
from dsanchor.pairs import (
    PAIR_FEATURES,
    PairController,
    PairControllerConfig,
    PairEnv,
    PairGateConfig,
    PairPPOConfig,
    export_pair_controller,
    pair_g,
    pair_ppo_model,
    pair_scores,
    pair_states,
    train_pair_gate,
    train_pair_ppo,
)
from dsanchor.retrieval import PairTerms, anchored_scores, pair_terms
from dsanchor.rl.env import RewardConfig
from dsanchor.rl.reward import AccuracyConfig, RetrievalReward


def _toy(t=40, n=12, seed=0):
    """A gallery where the right g depends on the query: for half the queries (type A) fine finds the true image
    and coarse is misleading, for the other half the reverse."""
    gen = torch.Generator().manual_seed(seed)
    d, r = 8, 3
    regions = torch.nn.functional.normalize(torch.randn(n, r, d, generator=gen), dim=-1)
    joint = JointFeatures(torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=-1), regions,
                          torch.ones(n, r, dtype=torch.bool), boxes=torch.rand(n, r, 4, generator=gen) * 0.5)
    text = torch.nn.functional.normalize(torch.randn(t, d, generator=gen), dim=-1)
    base = pair_terms(text, joint, 10.0)
    true = torch.arange(t) % n
    kind_a = torch.arange(t) < t // 2
    coarse, fine = base.coarse.clone() * 0.1, base.fine.clone() * 0.1
    rows = torch.arange(t)
    fine[rows[kind_a], true[kind_a]] += 0.8  # type A: fine is right
    coarse[rows[kind_a], (true[kind_a] + 1) % n] += 0.8  # ... and coarse points at another image
    coarse[rows[~kind_a], true[~kind_a]] += 0.8  # type B: coarse is right
    fine[rows[~kind_a], (true[~kind_a] + 1) % n] += 0.8
    terms = PairTerms(coarse, fine, torch.zeros(t, n), base.entropy)
    relevant = torch.zeros(t, n, dtype=torch.bool)
    relevant[rows, true] = True
    text_raw = torch.zeros(t, 4)
    text_raw[kind_a, 0], text_raw[~kind_a, 1] = 1.0, 1.0  # the query type is readable from the text
    return terms, relevant, text, text_raw, joint


def _r1(scores, relevant):
    return float(relevant.gather(1, scores.argmax(1, keepdim=True)).float().mean())


def test_states_hold_every_feature_of_the_top_m():
    terms, _, text, text_raw, joint = _toy()
    st = pair_states(terms, text, text_raw, joint, 10.0, base_g=0.5, top_m=5)
    assert st.cand.shape == (40, 5) and st.features.shape == (40, 5, len(PAIR_FEATURES))
    first = anchored_scores(terms, 0.5).topk(5, dim=1).indices
    assert torch.equal(st.cand, first)
    assert torch.allclose(st.features[..., PAIR_FEATURES.index("coarse")], terms.coarse.gather(1, first))
    box = st.features[..., PAIR_FEATURES.index("attended_x")]
    assert bool(((box >= 0) & (box <= 1)).all())


def test_pair_g_keeps_the_base_outside_the_candidates():
    cand = torch.tensor([[2, 0]])
    g = pair_g(torch.tensor([[0.9, 0.1]]), cand, 4, 0.5)
    assert torch.allclose(g, torch.tensor([[0.1, 0.5, 0.9, 0.5]]))


def test_gate_learns_a_g_per_query_type_and_beats_any_fixed_g(tmp_path):
    terms, relevant, text, text_raw, joint = _toy()
    cfg = PairControllerConfig(top_m=6, codebook=2, text_dim=4, base_g=0.5, hidden=16)
    st = pair_states(terms, text, text_raw, joint, 10.0, cfg.base_g, cfg.top_m)
    ctrl, info = train_pair_gate(terms, relevant, st, 20.0, cfg, PairGateConfig(steps=150, lr=1e-2,
                                                                              batch_queries=40))
    best_fixed = max(_r1(anchored_scores(terms, g), relevant) for g in np.linspace(0, 1, 11))
    assert best_fixed < 0.75
    assert _r1(pair_scores(terms, ctrl, st), relevant) > best_fixed + 0.2
    g = ctrl(st)
    assert bool(((g >= 0) & (g <= 1)).all())
    ctrl.save_pretrained(tmp_path / "c")
    again = PairController.from_pretrained(tmp_path / "c")
    assert torch.allclose(again(st), g)


def test_env_rescales_actions_and_rewards_the_reranked_list():
    terms, relevant, text, text_raw, joint = _toy(t=4, n=6)
    st = pair_states(terms, text, text_raw, joint, 10.0, 0.5, 6)
    reward = RetrievalReward(terms, relevant, None, AccuracyConfig())
    env = PairEnv(np.zeros((4, 6 * 3), np.float32), st.cand.numpy(), 6, 0.5, reward, RewardConfig())
    env.reset(seed=0)
    q = env._q
    _, r1, done, _, info = env.step(np.ones(6, np.float32))  # g = 1 on every candidate: fine only
    assert done and r1 == reward(q, 1.0)[0]
    _, r0, _, _, _ = env.step(-np.ones(6, np.float32))  # g = 0: coarse only
    assert r0 == reward(q, 0.0)[0]


def test_ppo_export_is_the_policy_mean(tmp_path):
    from stable_baselines3.common.vec_env import DummyVecEnv

    terms, relevant, text, text_raw, joint = _toy()
    cfg = PairControllerConfig(top_m=6, codebook=2, text_dim=4, base_g=0.5, hidden=16)
    st = pair_states(terms, text, text_raw, joint, 10.0, cfg.base_g, cfg.top_m)
    reward = RetrievalReward(terms, relevant, None, AccuracyConfig())
    ctrl, info = train_pair_ppo(terms, st, reward, RewardConfig(), cfg,
                                PairPPOConfig(timesteps=256, n_envs=2, n_steps=64, batch_size=64, n_epochs=2),
                                tmp_path, progress=False)
    assert info["timesteps"] >= 256 and (tmp_path / "pair_controller").is_dir()
    loaded = PairController.from_pretrained(tmp_path / "pair_controller")
    assert torch.allclose(loaded(st), ctrl(st))
    # the export copies the policy exactly: the deterministic action, rescaled, is the controller's g
    x = ctrl.inputs(st)
    obs = x.reshape(x.shape[0], -1).numpy()
    venv = DummyVecEnv([lambda: PairEnv(obs, st.cand.numpy(), 12, 0.5, reward, RewardConfig())])
    model = pair_ppo_model(venv, cfg, PairPPOConfig(n_steps=64, batch_size=64), cfg.top_m, x.shape[2])
    fresh = export_pair_controller(model, PairController(cfg))
    fresh.load_state_dict({**fresh.state_dict(), **{k: v for k, v in ctrl.state_dict().items()
                                                      if "centroid" in k or "feature" in k}})
    action, _ = model.predict(obs, deterministic=True)
    with torch.no_grad():
        assert np.allclose((np.clip(action, -1, 1) + 1) / 2, fresh(st).numpy(), atol=1e-5)
