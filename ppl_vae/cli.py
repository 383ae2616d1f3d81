"""The ``ppl-vae`` command line: ``train`` and ``configs``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ppl_vae.config import apply_overrides, from_dict, read_yaml, shipped_configs
from ppl_vae.errors import PplVaeError


def _train(args: argparse.Namespace) -> None:
    from ppl_vae.train import fit, resume_config

    overrides = list(args.set)
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    if args.resume:
        config, out_dir = resume_config(args.resume, overrides), Path(args.resume)
    else:
        config = from_dict(apply_overrides(read_yaml(args.config), overrides))
        name = Path(args.config).stem
        out_dir = Path(args.out) if args.out else Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = fit(config, out_dir, resume=bool(args.resume))
    metrics = run.metrics
    print(f"run directory: {out_dir}")
    print("nats per datapoint; ELBO = E_q[log p(x|z)] - KL(q||p), higher is better")
    print(f"  train ELBO {metrics['train_elbo']:10.2f}")
    print(f"  test ELBO  {metrics['test_elbo']:10.2f}  (reconstruction {metrics['test_reconstruction']:.2f}, "
          f"KL {metrics['test_kl']:.2f})")
    print(f"  {metrics['epochs']} epochs, {metrics['steps']} steps, {metrics['seconds']:.1f} s on {metrics['device']}")


def _configs(args: argparse.Namespace) -> None:
    for name, path in sorted(shipped_configs().items()):
        first_line = path.read_text().splitlines()[0].lstrip("# ") if path.read_text() else ""
        print(f"{name:20s} {first_line}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ppl-vae", description="Variational autoencoders with Pyro.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a VAE, evaluate it and draw its figures")
    train.add_argument("config", nargs="?", default="default",
                       help="a shipped config name (see 'ppl-vae configs') or a YAML file (default: default)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set model.latent_dim=10 (repeatable)")
    train.add_argument("--out", help="run directory (default: runs/<config>-<time>)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint")
    train.add_argument("--data-dir", help="folder holding the dataset files (default: $PPL_VAE_DATA or ~/.cache/ppl_vae)")
    train.set_defaults(handler=_train)
    configs = commands.add_parser("configs", help="list the shipped configs")
    configs.set_defaults(handler=_configs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except PplVaeError as error:
        print(f"ppl-vae: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:  # TrainingInterrupted says where its checkpoint is
        print(f"ppl-vae: interrupted{': ' if str(interrupt) else ''}{interrupt}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
