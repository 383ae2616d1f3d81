"""The ``ppl-vae`` command line: ``train``, ``eval``, ``configs`` and ``parts``."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from ppl_vae.config import apply_overrides, from_dict, read_yaml, shipped_configs
from ppl_vae.errors import ConfigError, PplVaeError


def _train(args: argparse.Namespace) -> None:
    from ppl_vae.runs import fit, resume_config

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
    print(f"  train ELBO {metrics['train_elbo']:10.2f}  (final weights, one pass over the training set)")
    print(f"  test ELBO  {metrics['test_elbo']:10.2f}  (reconstruction {metrics['test_reconstruction']:.2f}, "
          f"KL {metrics['test_kl']:.2f})")
    print(f"  {metrics['epochs']} epochs, {metrics['steps']} steps, {metrics['seconds']:.1f} s on {metrics['device']}")


def _eval(args: argparse.Namespace) -> None:
    from ppl_vae.runs import EVAL_FILE, evaluate_run

    results = evaluate_run(args.run_dir, args.num_samples, args.split, batch_size=args.batch_size,
                           particle_batch_size=args.particle_batch_size, data_dir=args.data_dir, device=args.device)
    khat = results["psis_khat_max"]
    rows = [
        ("log p(x)", f"{results['log_likelihood']:.2f} ± {results['log_likelihood_std_error']:.2f}",
         f"nats/datapoint, K={results['num_samples']} importance samples (± std. error over datapoints)"),
        ("ELBO", f"{results['elbo']:.2f}", "nats/datapoint"),
        ("-log p(x)", f"{results['bits_per_dim']:.4f}", "bits/dimension"),
        ("ESS", f"{results['ess_mean']:.1f} (min {results['ess_min']:.1f})", f"samples of {results['num_samples']}"),
        ("PSIS k̂ max", "n/a" if khat is None else f"{khat:.2f}",
         f"{results['psis_khat_above_0.7']} datapoints above 0.7"),
        ("KL(q(z|x)||p(z))", f"{results['kl']:.2f}", "nats/datapoint"),
        ("KL(q(z)||p(z))", f"{results['marginal_kl']:.2f}", "nats, aggregate posterior"),
        ("I(x; z)", f"{results['mutual_information']:.2f}", "nats"),
        ("active units", f"{results['active_units']} of {len(results['unit_activity'])}", "Cov_x(E_q[z_u]) > 0.01"),
        ("time", f"{results['seconds']:.1f}", "s"),
    ]
    print(f"{args.split} split, {results['num_datapoints']} datapoints; written to {Path(args.run_dir) / EVAL_FILE}")
    for name, value, unit in rows:
        print(f"  {name:18s} {value:>20s}  {unit}")


def _configs(args: argparse.Namespace) -> None:
    for name, path in sorted(shipped_configs().items()):
        first_line = path.read_text().splitlines()[0].lstrip("# ") if path.read_text() else ""
        print(f"{name:20s} {first_line}")


def _parts(args: argparse.Namespace) -> None:
    import inspect

    from ppl_vae.build import REGISTRIES
    from ppl_vae.data import DATASETS
    from ppl_vae.objectives import OBJECTIVES

    sections = {"data.name": DATASETS, "model.encoder, model.decoder": REGISTRIES["model.encoder"],
                **{key: registry for key, registry in REGISTRIES.items() if key not in ("model.encoder", "model.decoder")},
                "objective": OBJECTIVES}
    for key, registry in sections.items():
        print(f"{key} ({registry.kind}s):")
        for name in registry.names():
            print(f"  {name:22s} {_summary(inspect.getdoc(registry.get(name)))}")
            options = ", ".join(
                option if parameter.default is inspect.Parameter.empty else f"{option}={parameter.default!r}"
                for option, parameter in registry.options(name).items()
            )
            if options:
                print(f"  {'':22s} options: {options}")


def _summary(docstring: str | None) -> str:
    """The first sentence of a docstring, without reStructuredText markup."""
    paragraph = " ".join((docstring or "").split("\n\n")[0].split())
    sentence = re.split(r"\.\s+(?=[A-Z])", paragraph)[0].rstrip(".") + "."  # not at "et al. 2015"
    return sentence.replace("``", "").replace(":func:", "").replace(":class:", "").replace("`", "")


def _reproduce(args: argparse.Namespace) -> None:
    import yaml

    from ppl_vae.experiments import EXPERIMENTS, claim, run_experiment

    if args.list or not args.name:
        for name in EXPERIMENTS.names():
            print(f"{name:26s} {claim(name)}")
        return
    overrides = {}
    for override in args.set:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {override!r}: expected setting=value, e.g. --set epochs=10.")
        overrides[key] = yaml.safe_load(raw)
    out = Path(args.out) if args.out else Path("runs") / "reproduce" / args.name
    record = run_experiment(args.name, out, args.quick, overrides, args.device)
    print(f"{record['experiment']} ({record['mode']} mode, {record['wall_seconds']:.1f} s): written to {out}")
    print(json.dumps(record["results"], indent=1, default=str))


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
    evaluate = commands.add_parser("eval", help="importance-sampled log p(x) and latent diagnostics of a run")
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by 'ppl-vae train'")
    evaluate.add_argument("--num-samples", type=int, default=5000, metavar="K",
                          help="importance samples per datapoint (default: 5000, as Burda et al.)")
    evaluate.add_argument("--split", default="test", help="data split to evaluate (default: test)")
    evaluate.add_argument("--batch-size", type=int, default=100, help="datapoints per chunk (default: 100)")
    evaluate.add_argument("--particle-batch-size", type=int, default=100,
                          help="importance samples drawn at once per chunk (default: 100); lower it to use less memory")
    evaluate.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: auto")
    evaluate.add_argument("--data-dir",
                          help="folder holding the dataset files (default: the run's, else $PPL_VAE_DATA)")
    evaluate.set_defaults(handler=_eval)
    configs = commands.add_parser("configs", help="list the shipped configs")
    configs.set_defaults(handler=_configs)
    parts = commands.add_parser("parts", help="list the datasets, parts and objectives a config can name, with options")
    parts.set_defaults(handler=_parts)
    reproduce = commands.add_parser("reproduce", help="run one experiment (a paper's figure or table) into a folder")
    reproduce.add_argument("name", nargs="?", metavar="NAME", help="the experiment ('ppl-vae reproduce --list')")
    reproduce.add_argument("--list", action="store_true", help="list the experiments with the claim each checks")
    reproduce.add_argument("--quick", action="store_true", help="a budget of seconds: checks the pipeline, not the numbers")
    reproduce.add_argument("--out", help="output folder (default: runs/reproduce/NAME); --out figures to update the committed figures")
    reproduce.add_argument("--set", action="append", default=[], metavar="SETTING=VALUE",
                           help="override one of the experiment's settings, e.g. --set epochs=10 (repeatable)")
    reproduce.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: auto")
    reproduce.set_defaults(handler=_reproduce)
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
