"""The ``ppl-vae`` command line: ``train``, ``eval``, ``configs``, ``parts`` and ``reproduce``."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import time
from pathlib import Path

from ppl_vae.config import Config, apply_overrides, from_dict, read_yaml, shipped_configs, value_at
from ppl_vae.errors import ConfigError, PplVaeError, concise_warnings
from ppl_vae.registry import check_name, registered_names

PART_REGISTRIES = {
    "data.name": "DATASETS",
    "model.encoder": "NETS",
    "model.decoder": "NETS",
    "model.prior": "PRIORS",
    "model.posterior": "POSTERIORS",
    "model.likelihood": "LIKELIHOODS",
    "objective.beta": "SCHEDULES",
    "objective": "OBJECTIVES",
}
"""The registry (its variable's name) of each config key that names a part, in the order
:func:`ppl_vae.build.check` checks them."""


def _train(args: argparse.Namespace) -> int | None:
    overrides = list(args.set)
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    if args.nproc is not None:
        _check_nproc(args.nproc)
    if args.resume:
        moved = args.out is not None and Path(args.out).resolve() != Path(args.resume).resolve()
        extra = [text for text, given in ((f"--out {args.out}", moved), (f"the config {args.config!r}", args.config),
                                          ("--overwrite", args.overwrite)) if given]
        if extra:
            raise ConfigError(
                f"--resume {args.resume} continues that run in its own folder with the config in its checkpoint, so "
                f"{' and '.join(extra)} would be ignored; drop {'them' if len(extra) > 1 else 'it'} (change train.* "
                "values with --set), or start a new run without --resume."
            )
        config, out_dir = None, Path(args.resume)
    else:  # the schema and part names are checked before torch and Pyro are imported: a typo is answered at once
        name = args.config or "default"
        config = check_part_names(from_dict(apply_overrides(read_yaml(_config_source(name)), overrides)))
        out_dir = Path(args.out) if args.out else Path("runs") / f"{Path(name).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.nproc is not None and args.nproc > 1:
        from ppl_vae.training.distributed import launch

        entry_point = importlib.import_module("ppl_vae.cli").main  # by its module's name, also under python -m
        return launch(args.nproc, entry_point, _process_argv(args, out_dir, overrides))
    from ppl_vae.runs import fit, resume_config

    if args.resume:
        config = resume_config(args.resume, overrides)
    run = fit(config, out_dir, resume=bool(args.resume), overwrite=args.overwrite)
    metrics = run.metrics
    if not metrics:  # a process of a data-parallel run other than rank 0, which reports
        return None
    print(f"run directory: {out_dir}")
    print("nats per datapoint; ELBO = E_q[log p(x|z)] - KL(q||p), higher is better")
    print(f"  train ELBO {metrics['train_elbo']:10.2f}  (final weights, one pass over the training set; the progress "
          f"bar and history.json show the last epoch's running mean, {metrics['train_elbo_epoch_mean']:.2f})")
    print(f"  test ELBO  {metrics['test_elbo']:10.2f}  (reconstruction {metrics['test_reconstruction']:.2f}, "
          f"KL {metrics['test_kl']:.2f}; at the last epoch's end, as in history.json)")
    if "test_log_likelihood" in metrics:
        print(f"  test log p(x) {metrics['test_log_likelihood']:7.2f}  (importance sampled, "
              f"K={metrics['test_log_likelihood_samples']} samples per datapoint)")
    print(f"  {metrics['epochs']} epochs, {metrics['steps']} steps, {metrics['seconds']:.1f} s on {metrics['device']}")
    for warning in metrics["warnings"]:
        print(f"ppl-vae: warning: {warning}", file=sys.stderr)
    return None


def check_part_names(config: Config) -> Config:
    """Check the names of ``config``'s dataset and parts (not their options) as :func:`ppl_vae.build.check`
    does, without importing torch (see :func:`ppl_vae.registry.check_name`); return config."""
    for key, variable in PART_REGISTRIES.items():
        value = value_at(config, key)  # data.name is the name; a part's spec holds it
        check_name(variable, value if isinstance(value, str) else value.name, key)
    return config


def _check_nproc(nproc: int) -> None:
    """Refuse a process count below 1, and --nproc inside a run that torchrun already started."""
    if nproc < 1:
        raise ConfigError(f"--nproc: the number of processes must be at least 1, got {nproc}.")
    if os.environ.get("WORLD_SIZE") is not None:
        raise ConfigError("--nproc starts its own processes, but this one was started by torchrun (WORLD_SIZE is "
                          "set); drop --nproc and give the number of processes to torchrun (--nproc-per-node).")


def _process_argv(args: argparse.Namespace, out_dir: Path, overrides: list[str]) -> list[str]:
    """The command line of each process of a ``--nproc`` run: this one without ``--nproc``, with the
    run directory resolved (all processes must agree on it)."""
    if args.resume:
        argv = ["train", "--resume", str(out_dir)]
    else:
        argv = ["train", *([args.config] if args.config else []), "--out", str(out_dir)]
        argv += ["--overwrite"] if args.overwrite else []
    return argv + [f"--set={override}" for override in overrides]


def _config_source(name: str) -> str:
    """A shipped config name or YAML path as given; a dataset name that is no config's name becomes
    the error to use the config that trains on it (``digits``: ``default``)."""
    configs = shipped_configs()
    if Path(name).suffix or name in configs:
        return name
    if name in registered_names("DATASETS").names:
        trains_on = sorted(config for config, path in configs.items()
                           if read_yaml(path).get("data", {}).get("name") == name)
        suggestion = (f"the shipped config {' or '.join(map(repr, trains_on))} trains on it: "
                      f"'ppl-vae train {trains_on[0]}'" if trains_on else
                      f"train on it with 'ppl-vae train --set data.name={name}' (and a model for its data)")
        raise ConfigError(f"{name!r} is a dataset, not a config; {suggestion}. 'ppl-vae configs' lists the configs.")
    return name


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
         "could not be fitted: too few samples" if khat is None else
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


def _reproduce(args: argparse.Namespace) -> int:
    import yaml

    if args.name and not args.list:
        check_name("EXPERIMENTS", args.name, "experiment")  # a typo answered before torch is imported
    from ppl_vae.experiments import EXPERIMENTS, claim, run_experiment

    if args.list or not args.name:
        print(f"{'experiment':26s} {'full mode':>9s}  claim (full-mode wall time measured on 2 CPU cores)")
        for name in EXPERIMENTS.names():
            seconds = getattr(EXPERIMENTS.get(name), "full_seconds", None)
            runtime = "?" if seconds is None else f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
            print(f"{name:26s} {runtime:>9s}  {claim(name)}")
        return 0
    if args.check and args.quick:
        raise ConfigError("--check compares a full-mode run with its reference bands; drop --quick.")
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
    if not args.check:
        return 0
    failed = [check for check in record["checks"] if not check["within"]]
    for check in record["checks"]:
        published = "" if check["published"] is None else f", published {check['published']} ({check['source']})"
        print(f"{'ok  ' if check['within'] else 'FAIL'} {check['result']} = {check['value']}: "
              f"band [{check['low']}, {check['high']}]{published}")
    if args.set and failed:
        print("(the bands are for the default full-mode settings; --set changed them)", file=sys.stderr)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ppl-vae", description="Variational autoencoders with Pyro.")
    package = sys.modules[__package__]  # ppl_vae, always imported before its cli module
    parser.add_argument("--version", action="version", version=f"%(prog)s {package.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a VAE, evaluate it and draw its figures")
    train.add_argument("config", nargs="?",
                       help="a shipped config name (see 'ppl-vae configs') or a YAML file (default: default, "
                            "the digits quick start)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set model.latent_dim=10 (repeatable)")
    train.add_argument("--out", help="run directory (default: runs/<config>-<time>)")
    train.add_argument("--resume", metavar="RUN_DIR",
                       help="continue the run in RUN_DIR from its checkpoint, with its config (--set train.* to change)")
    train.add_argument("--overwrite", action="store_true",
                       help="replace the run already in --out (its checkpoint included) instead of refusing")
    train.add_argument("--data-dir", help="folder holding the dataset files (default: $PPL_VAE_DATA or ~/.cache/ppl_vae)")
    train.add_argument("--nproc", type=int, metavar="N",
                       help="data-parallel training in N processes on this machine (gloo on CPU, nccl with one GPU "
                            "each); data.batch_size is the global batch. On several machines use torchrun instead")
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
    reproduce = commands.add_parser(
        "reproduce", help="run one experiment (a paper's figure or table) into a folder",
        description="Run one experiment into a folder: its figures, NAME.json, and its trained runs in runs/. "
                    "Running the same command again with the same --out resumes: finished runs are reused and an "
                    "interrupted one continues from its checkpoint.")
    reproduce.add_argument("name", nargs="?", metavar="NAME", help="the experiment ('ppl-vae reproduce --list')")
    reproduce.add_argument("--list", action="store_true", help="list the experiments with the claim each checks")
    reproduce.add_argument("--quick", action="store_true", help="a budget of seconds: checks the pipeline, not the numbers")
    reproduce.add_argument("--out", help="output folder (default: runs/reproduce/NAME); --out figures to update the committed figures")
    reproduce.add_argument("--set", action="append", default=[], metavar="SETTING=VALUE",
                           help="override one of the experiment's settings, e.g. --set epochs=10 (repeatable)")
    reproduce.add_argument("--check", action="store_true",
                           help="exit with status 1 if a full-mode result falls outside its reference band")
    reproduce.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: auto")
    reproduce.set_defaults(handler=_reproduce)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with concise_warnings("ppl-vae"):  # our DiagnosticWarnings as one line, without a source line
            status = args.handler(args)
    except PplVaeError as error:
        print(f"ppl-vae: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:  # TrainingInterrupted says where its checkpoint is
        print(f"ppl-vae: interrupted{': ' if str(interrupt) else ''}{interrupt}", file=sys.stderr)
        return 130
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
