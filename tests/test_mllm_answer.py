"""`dsanchor mllm answer` on tiny random LLaVA, BLIP-2 and IDEFICS models: CLEVR-format questions in, normalised
short answers out with the g used, accuracy per family; a controller's g follows the question; bad input is one
line."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

from dsanchor.cli import main  # noqa: E402
from dsanchor.controller import ControllerConfig, GranularityController  # noqa: E402
from dsanchor.integrations.small_models import save_tiny_mllm, tiny_mllm  # noqa: E402
from dsanchor.integrations.state import state_layout  # noqa: E402
from dsanchor.mllm.answer import family_accuracy  # noqa: E402

TYPES = ("llava", "blip2", "idefics")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from dsanchor.data import SynthConfig, generate_synth

    root = tmp_path_factory.mktemp("answer")
    generate_synth(root / "synth", SynthConfig(scenes=3, image_size=64, max_objects=3, supersample=1))
    assert main(["data", "questions", "--data", str(root / "synth"), "--format", "synth", "--out",
                 str(root / "q.json"), "--per-family", "2"]) == 0
    for t in TYPES:
        save_tiny_mllm(t, root / t)
        torch.manual_seed(0)
        layout = state_layout(tiny_mllm(t)[0], 1)
        GranularityController(ControllerConfig(state_dim=layout.size, hidden=8, state_layout=layout.to_dict())
                              ).save_pretrained(root / f"ctrl_{t}")
    return root


def _args(world, t, *extra):
    return ["mllm", "answer", "--model-type", t, "--model-path", str(world / t), "--questions",
            str(world / "q.json"), "--images", str(world / "synth"), "--device", "cpu", "--quiet", *extra]


@pytest.mark.parametrize("model_type", TYPES)
def test_answer_with_and_without_dsa(world, tmp_path, capsys, model_type):
    questions = json.loads((world / "q.json").read_text())["questions"]
    assert main(_args(world, model_type, "--out", str(tmp_path / "base.json"))) == 0
    out = capsys.readouterr().out
    assert f"{len(questions)} questions answered" in out and "accuracy" in out
    base = json.loads((tmp_path / "base.json").read_text())
    assert len(base["answers"]) == len(questions) and all(a["g"] is None for a in base["answers"])
    short = [a for a, q in zip(base["answers"], questions, strict=True) if "answer" in q]  # not caption prompts
    assert short and all(a["answer"] == a["answer"].lower() and " " not in a["answer"] for a in short)
    assert any("references" in q for q in questions)  # caption prompts per granularity, kept whole
    assert set(base["accuracy"]) >= {"all", "exist", "count"}
    assert main(_args(world, model_type, "--g", "0.3", "--out", str(tmp_path / "g.json"))) == 0
    fixed = json.loads((tmp_path / "g.json").read_text())["answers"]
    assert all(a["g"] == pytest.approx(0.3) for a in fixed)
    assert main(_args(world, model_type, "--controller", str(world / f"ctrl_{model_type}"), "--out",
                      str(tmp_path / "c.json"))) == 0
    ctrl = json.loads((tmp_path / "c.json").read_text())["answers"]
    gs = [a["g"] for a in ctrl]
    assert all(0.0 <= g <= 1.0 for g in gs)
    first = [a["g"] for a in ctrl if a["image_filename"] == ctrl[0]["image_filename"]]
    assert len({round(g, 6) for g in first}) > 1  # same image, other questions: the controller reads the question


def test_family_accuracy_counts_exact_normalised_matches():
    rows = [{"question": "q", "image_filename": "a", "answer": "Yes", "question_family": "exist"},
            {"question": "q", "image_filename": "a", "answer": "3", "question_family": "count"},
            {"question": "q", "image_filename": "a", "answer": "no", "question_family": "exist"}]
    answers = [{"answer": "yes"}, {"answer": "3"}, {"answer": "yes"}]
    acc = family_accuracy(rows, answers)
    assert acc["exist"] == {"accuracy": 0.5, "n": 2} and acc["count"]["accuracy"] == 1.0
    assert acc["all"] == {"accuracy": pytest.approx(2 / 3), "n": 3}


def test_bad_input_is_one_line(world, tmp_path, capsys):
    assert main(_args(world, "llava", "--g", "0.3", "--controller", str(world / "ctrl_llava"))) == 2
    assert "not both" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"questions": [{"question": "Is there a cube?"}]}))
    args = _args(world, "llava")
    args[args.index("--questions") + 1] = str(bad)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "image_filename" in err and "questions[0]" in err
    args[args.index("--questions") + 1] = str(tmp_path / "missing.json")
    assert main(args) == 2 and "not found" in capsys.readouterr().err
