"""`itergen` command: one obvious way to run each job of the project.

Each subcommand is a tyro dataclass config, run by its ``main()`` method or by a module-level function that
takes it; its module is imported only when that subcommand runs, so `itergen --help` stays fast and one
job's heavy imports don't slow the others.

Bad input (a missing or corrupt file, an inconsistent option) ends a command with one line on stderr naming the
file/field and exit status 1; ``--debug`` (anywhere on the command line) or ``ITERGEN_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Dict, Optional, Sequence, Tuple

import tyro

from itergen_ns import errors

# name -> (module, config class, one-line help[, module-level function run with the config instead of .main()])
SUBCOMMANDS: Dict[str, Tuple[str, ...]] = {
    "demo": ("itergen_ns.eval.demo", "DemoConfig", "the whole loop on the embedded procedural category (CPU)"),
    "make-scenes": ("itergen_ns.data.scenes", "MakeScenesConfig", "write procedural object scenes (nerfstudio format)"),
    "train-baseline": (
        "itergen_ns.eval.baseline",
        "TrainBaselineConfig",
        "train itergen-splatfacto from N views of one scene, print held-out PSNR/SSIM",
    ),
    "export-snapshots": (
        "itergen_ns.snapshots.exporter",
        "ExportSnapshotsConfig",
        "run splatfacto from few views per scene, save renders every N steps (diffusion training data)",
    ),
    "snapshots-summary": ("itergen_ns.snapshots.summary", "SummaryConfig", "list snapshot shards, scenes, bytes"),
    "train-diffusion": (
        "itergen_ns.diffusion.train",
        "TrainDiffusionConfig",
        "train the render-conditioned diffusion model (single process; use accelerate launch for several GPUs)",
        "train",
    ),
    "eval": ("itergen_ns.eval.harness", "EvalConfig", "train methods from 1/6 views, render all frames, metric tables"),
    "bench": (
        "itergen_ns.eval.bench_proxy",
        "BenchProxyConfig",
        "proxy benchmark: all methods and ablations on >= 10 held-out procedural scenes, paired 95% CIs (<= 90 min CPU)",
    ),
    "gain": (
        "itergen_ns.eval.gain",
        "GainConfig",
        "generator gain: samples vs. their renders and trivial predictors on held-out snapshot clips",
    ),
}


def _usage() -> str:
    width = max(len(n) for n in SUBCOMMANDS)
    lines = ["usage: itergen [--debug] COMMAND [--help] [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {entry[2]}" for name, entry in SUBCOMMANDS.items()]
    lines += ["", f"--debug (or {errors.DEBUG_ENV}=1): full traceback instead of the one-line error message"]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    # OpenMP threads that spin while waiting make CPU training many times slower on a busy machine; must be
    # set before torch starts its thread pool, i.e. before the subcommand's modules are imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"itergen: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, class_name, help_, *runner = SUBCOMMANDS[name]
    module = importlib.import_module(module_name)
    config = tyro.cli(getattr(module, class_name), args=rest, prog=f"itergen {name}", description=help_)
    try:
        result = getattr(module, runner[0])(config) if runner else config.main()
    except Exception as err:
        if not debug and errors.report(err):
            return errors.EXIT_INPUT_ERROR
        raise
    return int(result) if isinstance(result, int) else 0


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
