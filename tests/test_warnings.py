"""Warnings: a run says what it doubts in one sentence of ours (a DiagnosticWarning), never with
library noise. A fresh process (ArviZ's import notice comes once a day, per user cache folder)
trains and evaluates tiny runs with every other warning turned into an error."""

import os
import subprocess
import sys
import warnings

import pytest

from ppl_vae.evaluation import DiagnosticWarning, concise_warnings

TRAIN_AND_EVALUATE = """
import sys, warnings
warnings.simplefilter("error")  # before any import: a library's import-time warning fails too
from ppl_vae.evaluation import DiagnosticWarning, concise_warnings
warnings.simplefilter("always", DiagnosticWarning)
from ppl_vae.config import from_dict
from ppl_vae.runs import evaluate_run, fit

out = sys.argv[1]
for dataset, num_samples in (("digits", 5), ("frey", 30)):  # 5 samples: too few for PSIS; 30: enough
    config = from_dict({"data": {"name": dataset}, "model": {"latent_dim": 2},
                        "train": {"epochs": 1, "progress": False}})
    fit(config, f"{out}/{dataset}")
    with concise_warnings("ppl-vae"):
        evaluate_run(f"{out}/{dataset}", num_samples=num_samples, device="cpu", progress=False)
"""


def test_a_tiny_run_warns_only_in_our_own_words(tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONWARNINGS": ""}
    result = subprocess.run([sys.executable, "-c", TRAIN_AND_EVALUATE, str(tmp_path / "runs")], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines, "5 importance samples are too few for PSIS: that must be said"
    assert all(line.startswith("ppl-vae: warning: PSIS k̂ ") and line.endswith(".") for line in lines), lines
    assert lines[0] == ("ppl-vae: warning: PSIS k̂ was not computed: it needs at least 21 importance samples per "
                        "datapoint, got 5, so nothing checks whether the guide is a good enough proposal (use more "
                        "samples).")
    assert (tmp_path / "runs" / "frey" / "manifold.png").is_file()  # the unlabelled scatter and manifold, drawn quietly


def test_concise_warnings_show_ours_in_one_line_and_pass_others_on(capsys):
    with warnings.catch_warnings(record=True) as others:  # what showed warnings before: here, a list
        warnings.simplefilter("always")
        before = warnings.showwarning
        with concise_warnings("ppl-vae"):
            warnings.warn("PSIS k̂ > 0.7 for 3 of 10 datapoints: use more samples.", DiagnosticWarning)
            warnings.warn("a library's own warning", RuntimeWarning)
        assert warnings.showwarning is before
    assert capsys.readouterr().err == "ppl-vae: warning: PSIS k̂ > 0.7 for 3 of 10 datapoints: use more samples.\n"
    assert [(w.category, str(w.message), w.filename) for w in others] == [
        (RuntimeWarning, "a library's own warning", __file__)]


def test_recorded_warnings_are_still_recorded():
    with concise_warnings("ppl-vae"):
        with pytest.warns(DiagnosticWarning, match="doubt"):
            warnings.warn("a doubt", DiagnosticWarning)
