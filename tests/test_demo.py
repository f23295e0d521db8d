"""End-to-end smoke test of `dsanchor demo` on a few synthetic scenes, and the results.json helpers."""

import json

import pytest

from dsanchor.cli import main
from dsanchor.report.results import METHOD_ORDER, build_results, main_table, merge_seeds

TINY = ["--scenes", "60", "--align-epochs", "2", "--detector-epochs", "2", "--tune-trials", "2",
        "--tune-timesteps", "512", "--ppo-timesteps", "1024", "--caption-steps", "20",
        "--caption-ppo-timesteps", "512", "--pair-timesteps", "256", "--workers", "0", "--threads", "1"]


@pytest.mark.slow
def test_demo_end_to_end_and_reuse(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *TINY]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["methods"]) == set(METHOD_ORDER)  # every row filled
    for name, row in res["methods"].items():
        for proto in (row, row["exact"]):  # both protocols, both directions, for every method
            for direction in ("t2i", "i2t"):
                assert all(0.0 <= proto[direction][k] <= 1.0 for k in ("R@1", "R@5", "R@10"))
            assert proto["t2i"]["R@1"] <= proto["t2i"]["R@5"] <= proto["t2i"]["R@10"]
        assert row["exact"]["t2i"]["R@1"] >= row["t2i"]["R@1"]  # exact positives include the paired one
        assert 0.0 <= row["coverage_i2t"] <= 1.0
        if name not in ("gate_pair", "dsa_pair"):  # retrieval only: a g per text query and candidate image
            assert {"BLEU-4", "CIDEr", "CHAIR_i", "CHAIR_s"} <= set(row), name
        assert set(row["by_granularity"]) <= {"scene", "object", "relation"}
    assert res["methods"]["oracle"]["exact"]["t2i"]["MRR"] >= res["methods"]["fixed_best"]["exact"]["t2i"]["MRR"]
    assert set(res["pope"]) == {"random", "popular", "adversarial"}
    assert {"synth", "extract", "align", "detector", "tune", "ppo", "caption", "eval", "total"} <= set(res["timing_s"])
    pair = res["paired"]["pairs"]["dsa_ppo-fine"]["exact"]["t2i"]["R@1"]
    assert pair["lo"] <= pair["diff"] <= pair["hi"] and pair["n_queries"] == res["n_captions"]
    assert pair["n_images"] == res["n_images"] and res["paired"]["n_comparisons"] == 10 * 2 * 2 * 2
    assert pair["lo_bonf"] <= pair["lo"] and pair["hi"] <= pair["hi_bonf"]
    assert (out / "seed0" / "eval" / "hits.safetensors").exists()
    hard = res["hard_negatives"]
    assert {"replace-att", "swap-att", "swap-rel", "replace-count", "all"} <= set(hard["methods"]["dsa_pair"])
    assert set(hard["methods"]) == set(METHOD_ORDER) - {"oracle"}
    assert all(0.0 <= r["all"]["lo"] <= r["all"]["accuracy"] <= r["all"]["hi"] <= 1.0 for r in hard["methods"].values())
    assert 0.0 <= res["relations"]["mix"] <= 1.0 and (out / "seed0" / "ppo" / "pair" / "pair_controller").is_dir()
    report = (out / "report.md").read_text()
    assert "| dsa_ppo |" in report and "oracle (per-query upper bound)" in report and "| dsa_ppo − fine |" in report
    assert "## Compositional hard negatives" in report and "| dsa_pair − fixed_best |" in report
    for png in ("g_by_granularity.png", "recall_vs_g.png", "ppo_curve.png", "examples.png", "tuning_objective.png",
                "hard_negatives.png"):
        assert (out / png).stat().st_size > 1000
    capsys.readouterr()
    assert main(["demo", "--out", str(out), *TINY]) == 0  # a rerun reuses every stage
    assert capsys.readouterr().out.count("reused") == 8


def _row(r10):
    return {"t2i": {"R@1": r10 / 2, "R@5": r10, "R@10": r10}, "i2t": {"R@1": 0.1, "R@5": 0.2, "R@10": 0.3},
            "by_granularity": {"scene": {"t2i_R@10": r10, "mean_g": 0.2}}, "ms_per_query": 0.01}


def test_merge_seeds_means_and_stds():
    a = build_results("synth", "test", 10, 50, [0], {"coarse": _row(0.2), "fine": _row(0.4)})
    b = build_results("synth", "test", 10, 50, [1], {"coarse": _row(0.4), "fine": _row(0.4)})
    m = merge_seeds([a, b])
    assert m["seeds"] == [0, 1] and m["n_images"] == 10 and "n_images_std" not in m
    assert m["methods"]["coarse"]["t2i"]["R@10"] == pytest.approx(0.3)
    assert m["methods"]["coarse"]["t2i"]["R@10_std"] == pytest.approx(0.1)
    assert m["methods"]["fine"]["t2i"]["R@10_std"] == pytest.approx(0.0)
    assert "gate_grad" not in m["methods"]  # a method that did not run is absent, not zero
    table = main_table(m)
    assert "0.300 ± 0.100" in table and "gate_grad" not in table
    chance = {"paired": {"t2i": {"R@1": 0.1, "R@10": 0.5}, "i2t": {"R@1": 0.1, "R@10": 0.6}}}
    m = merge_seeds([{**a, "chance": chance}, {**b, "chance": chance}])
    row = main_table(m).splitlines()[-1]
    assert row.startswith("| chance (random ranking) | 0.100 | 0.500 | 0.100 | 0.600 |") and "±" not in row
    # a value that is a number on one seed and not on another (a controller's g label) keeps the first seed's
    m = merge_seeds([{**a, "hard_negatives": {"g": 0.5}}, {**b, "hard_negatives": {"g": None}}])
    assert m["hard_negatives"] == {"g": 0.5}


def test_caption_g_does_not_overwrite_retrieval_g():
    ret = {"fixed_best": {**_row(0.3), "g": 0.45}}
    cap = {"fixed_best": {"BLEU-4": 0.3, "CIDEr": 0.5, "CHAIR_i": 0.1, "CHAIR_s": 0.2, "g": 0.1, "mean_g": 0.1}}
    row = build_results("synth", "test", 1, 5, [0], ret, cap)["methods"]["fixed_best"]
    assert row["g"] == 0.45 and row["caption_g"] == 0.1 and row["caption_mean_g"] == 0.1 and row["CIDEr"] == 0.5


@pytest.mark.slow
def test_run_on_a_dataset_without_splits_or_scene_graphs(tmp_path, capsys):
    """`dsanchor run` on COCO-format files with no split file: a seeded split, announced, and the paired
    protocol only (no scene graphs), said in the report."""
    from dsanchor.data import SynthConfig, generate_synth

    data = tmp_path / "data"
    generate_synth(data, SynthConfig(scenes=40, image_size=64, seed=5))
    (data / "splits.json").unlink()
    out = tmp_path / "run"
    budget = [a for a in TINY if a not in ("--scenes", "60")]
    assert main(["run", "--data", str(data), "--format", "coco", "--out", str(out), *budget]) == 0
    assert "seeded split, seed 0" in capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert all("exact" not in row for row in res["methods"].values())
    assert res["n_images"] == 8 and "paired" in res["paired"]["pairs"]["dsa_ppo-fine"]
    assert "exact" not in res["paired"]["pairs"]["dsa_ppo-fine"]
    assert "paired** only" in (out / "report.md").read_text()
