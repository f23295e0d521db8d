"""`dsanchor demo`: every stage on the embedded default, then results.json, report.md and plots."""

from __future__ import annotations

from dsanchor.commands._common import add_common, set_threads, yaml_of
from dsanchor.config import add_config_args, resolve_config
from dsanchor.errors import ConfigError


def add_parser(sub) -> None:
    from dsanchor.commands._common import add_overwrite
    from dsanchor.demo import DemoConfig, MLLMDemoConfig

    p = sub.add_parser("demo", help="run the whole pipeline on synthetic data (about 4 minutes on 2 idle cores)")
    p.add_argument("--out", default=None, help="output directory (rerun to reuse finished stages; default "
                                               "runs/demo, with --mllm runs/demo_mllm)")
    p.add_argument("--mllm", action="store_true", help="the MLLM part instead: questions, grid cache, tune, PPO, "
                                                       "router and eval on the small LLaVA shipped in the package "
                                                       "(its own ~10-minute budget; --mllm-build builds one)")
    add_overwrite(p)
    add_common(p)
    add_config_args(p, DemoConfig)
    add_config_args(p, MLLMDemoConfig, prefix="mllm_")
    p.set_defaults(func=run)


def run(args) -> int:
    from dsanchor.demo import DemoConfig, run_demo

    set_threads(args)
    demo = resolve_config(DemoConfig, args, yaml_of(args), section="demo")
    if args.mllm:
        from dsanchor.demo import MLLMDemoConfig, run_mllm_demo
        from dsanchor.mllm.config import BuildConfig

        mllm = resolve_config(MLLMDemoConfig, args, yaml_of(args), prefix="mllm_", section="demo_mllm")
        build = resolve_config(BuildConfig, None, yaml_of(args), section="build")  # YAML only: with --mllm-build
        given = [f"--{n.replace('_', '-')}" for n in ("scenes", "data_seed", "image_size") if getattr(args, n, None)
                 is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} apply to the retrieval demo only; with --mllm use --mllm-scenes and "
                              "--mllm-data-seed (the images are rendered at the model's size)")
        if yaml_of(args).get("build") and not mllm.build:
            raise ConfigError("the config's build: section sizes a model built here: add --mllm-build")
        if "seed" not in (yaml_of(args).get("build") or {}):
            build.seed = mllm.seed
        out = args.out or "runs/demo_mllm"
        results = run_mllm_demo(out, mllm, demo, build, overwrite=bool(args.overwrite))
        print(f"wrote {out}/eval/results.json and {out}/eval/report.md "
              f"({results['demo_timing_s']['total']:.0f}s in all)")
        return 0
    run_demo(args.out or "runs/demo", demo, overwrite=bool(args.overwrite))
    return 0
