"""``python -m benchmarks``: ppl_vae against a plain-PyTorch VAE, side by side in one process.

    python -m benchmarks                 # full: MNIST, elbo/meanfield/iwae, batch 100/128/512 (~32 min on 2 cores)
    python -m benchmarks --quick         # seconds: scikit-learn's digits, elbo, batch 128, tiny K
    python -m benchmarks --only epoch log_likelihood --repeats 5
    python -m benchmarks --markdown benchmarks/results/cpu-2cores-vm.json   # a results file as a README table

Prints one line per case as it finishes and writes ``benchmarks/results/<machine>.json`` (``--out``
to choose the file). Each ratio is ours / the baseline's throughput, from the medians of interleaved
repetitions; throughputs are datapoints per second, memory is the peak above what was in use before
(MB), times are wall seconds. The device is CUDA when torch sees one (``--device`` to choose).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from benchmarks.cases import Settings, cli_case, epoch_case, log_likelihood_case, step_case
from benchmarks.timing import hold_freed_memory, machine, machine_tag, round_ratios
from ppl_vae.build import resolve_device

RESULTS = Path(__file__).resolve().parent / "results"
CASES = ("step", "epoch", "log_likelihood", "cli")
QUICK = Settings(dataset="digits", objectives=("elbo",), batch_sizes=(128,), repeats=1, epoch_repeats=1,
                 log_likelihood_repeats=1, steps=3, num_samples=30, test_points=50, cli_repeats=1)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds on the digits dataset (checks the runner)")
    parser.add_argument("--only", nargs="+", choices=CASES, default=list(CASES), help="the cases to run")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--repeats", type=int, help="interleaved repetitions per case (default 3, of an epoch 3, "
                                                    "of the log-likelihood 7; quick 1)")
    parser.add_argument("--objectives", nargs="+", choices=("elbo", "meanfield", "iwae"),
                        help="objectives of the step and epoch cases (default all)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, help="batch sizes of the step and epoch cases "
                                                                     "(default 100 128 512)")
    parser.add_argument("--out", type=Path, help="the JSON file (default benchmarks/results/<machine>.json)")
    parser.add_argument("--markdown", type=Path, metavar="RESULTS", help="print a results file as Markdown and stop")
    return parser.parse_args(argv)


def markdown(report: dict[str, Any]) -> str:
    """A results file as a Markdown table (one row per case and implementation), the machine above it."""
    info = report["machine"]
    rows = [f"Measured {report['started']} on {info['cpu']} ({info['cpu_cores']} cores, {info['torch_threads']} torch "
            f"thread(s), load average {', '.join(f'{load:.1f}' for load in info['load_average_at_start'] or [])} at "
            f"the start), device {info['device']}{', ' + info['gpu'] if info['gpu'] else ''}; torch {info['torch']}, "
            f"pyro {info['pyro']}; {report['seconds']:.0f} s in all.", "",
            "| case | ours (datapoints/s) | baseline (datapoints/s) | ratio ours / baseline | single rounds' ratios "
            "| peak memory ours / baseline (MB) |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, result in report["results"].items():
        if name == "cli":
            continue
        base = result["baseline"]
        for side in [side for side in result if side not in ("baseline",) and isinstance(result[side], dict)
                     and "ratio" in result[side]]:
            ours = result[side]
            label = name + {"ours_psis": " (with PSIS)", "ours_compiled": " (train.compile)",
                            "baseline_fused_adam": " (the baseline itself, with fused Adam)"}.get(side, "")
            peaks = (ours["peak_memory_mb"], base["peak_memory_mb"])
            memory = "n/a" if peaks == (None, None) else "/".join("?" if peak is None else f"{peak:.0f}" for peak in peaks)
            paired = ours.get("baseline_seconds", base["seconds"])  # the baseline runs this side was paired with
            rounds = round_ratios(paired, ours["seconds"])
            spread = f"{min(rounds):.2f} to {max(rounds):.2f}" if len(rounds) > 1 else "one round"
            work = ours["throughput_per_second"] * ours["median_seconds"]  # datapoints per run
            rows.append(f"| {label} | {ours['throughput_per_second']:.0f} | {work / statistics.median(paired):.0f} | "
                        f"{ours['ratio']:.2f} | {spread} | {memory} |")
    for command in report["results"].get("cli", {}).values():
        rows.append(f"| `{command['command']}` | {command['median_seconds']:.2f} s | | | | |")
    return "\n".join(rows)


def line(name: str, result: dict[str, Any]) -> str:
    """One printed line: each side's throughput and peak memory, and the ratios."""
    parts = []
    for side, summary in result.items():
        if isinstance(summary, dict) and "throughput_per_second" in summary:
            memory = summary["peak_memory_mb"]
            ratio = f" ratio {summary['ratio']:.3f}" if "ratio" in summary else ""
            parts.append(f"{side} {summary['throughput_per_second']:9.0f}/s"
                         f" ({'?' if memory is None else f'{memory:.0f}'} MB){ratio}")
    return f"{name:<28} " + " | ".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return 0
    chosen = {"device": args.device, "repeats": args.repeats, "epoch_repeats": args.repeats,
              "log_likelihood_repeats": args.repeats,
              "objectives": tuple(args.objectives or ()), "batch_sizes": tuple(args.batch_sizes or ())}
    settings = replace(QUICK if args.quick else Settings(), **{key: value for key, value in chosen.items() if value})
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 1)))
    hold_freed_memory()
    device = resolve_device(settings.device)
    info = machine(device)
    out = args.out or RESULTS / f"{machine_tag(info)}{'-quick' if args.quick else ''}.json"
    report: dict[str, Any] = {
        "machine": info, "settings": asdict(settings), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "units": "throughput: datapoints per second; ratio: ours / baseline throughput (medians of interleaved "
                 "repetitions, > 1 means ours is faster); peak_memory_mb: MB above what was in use before the run; "
                 "seconds: wall time; mean_log_likelihood: nats per datapoint (log-probability)",
        "results": {},
    }
    print(f"device {device}, {info['cpu']}, {info['cpu_cores']} cores, {info['torch_threads']} torch thread(s); "
          "throughput in datapoints/s, ratio = ours / baseline", flush=True)
    started = time.perf_counter()
    results = report["results"]

    def save() -> None:  # after every case, so that an interrupted run keeps what it measured
        report["seconds"] = time.perf_counter() - started
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))

    for case in args.only:
        if case in ("step", "epoch"):
            run = step_case if case == "step" else epoch_case
            for objective in settings.objectives:
                for batch_size in settings.batch_sizes:
                    name = f"{case} {objective} batch {batch_size}"
                    results[name] = run(settings, objective, batch_size)
                    print(line(name, results[name]), flush=True)
                    save()
        elif case == "log_likelihood":
            name = f"log_likelihood K={settings.num_samples}"
            results[name] = log_likelihood_case(settings)
            print(line(name, results[name]) + f" | PSIS adds {100 * results[name]['psis_overhead']:.1f}%", flush=True)
            save()
        else:
            results["cli"] = cli_case(settings)
            for command in results["cli"].values():
                print(f"{command['command']:<50} {command['median_seconds']:.2f} s (exit {command['exit_code']})",
                      flush=True)
            save()
    print(f"wrote {out} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
