"""The benchmark runner (``python -m benchmarks``) works and writes its JSON; the baseline it compares
against computes the same bounds as ppl_vae's objectives (the numbers of the timings are not checked)."""

import json
import math
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ sits beside the package, not in it
from benchmarks import baseline  # noqa: E402
from benchmarks.__main__ import main, markdown  # noqa: E402
from benchmarks.cases import BaselineSteps, Settings, bench_config, plain_copy  # noqa: E402
from ppl_vae.build import build  # noqa: E402
from ppl_vae.evaluation import evaluate_elbo  # noqa: E402
from ppl_vae.objectives.traces import PlateLayout, log_weights  # noqa: E402


def test_quick_run_writes_ratios_and_memory(tmp_path):
    out = tmp_path / "results.json"
    assert main(["--quick", "--only", "step", "epoch", "log_likelihood", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["machine"]["cpu_cores"] >= 1 and "torch" in report["machine"]
    step = report["results"]["step elbo batch 128"]
    assert step["ours"]["ratio"] > 0 and step["baseline"]["throughput_per_second"] > 0
    assert len(step["ours"]["seconds"]) == 1
    log_likelihood = report["results"]["log_likelihood K=30"]
    assert {"ours", "ours_psis", "baseline"} <= set(log_likelihood)
    means = log_likelihood["mean_log_likelihood"]  # same weights, K = 30: the two estimates agree roughly
    assert abs(means["ours"] - means["baseline"]) < 0.05 * abs(means["baseline"])
    row = next(line for line in markdown(report).splitlines() if line.startswith("| step elbo batch 128 |"))
    assert f"| {step['ours']['ratio']:.2f} | one round |" in row  # one round: no spread to show
    epoch = report["results"]["epoch elbo batch 128"]
    assert set(epoch) == {"ours", "ours_compiled", "baseline", "baseline_fused_adam"}
    for side in ("ours", "ours_compiled"):  # each fit is paired with the baseline epoch run inside it
        assert len(epoch[side]["baseline_seconds"]) == len(epoch[side]["seconds"]) == 1
        assert epoch[side]["ratio"] == pytest.approx(epoch[side]["baseline_seconds"][0] / epoch[side]["seconds"][0])
    assert epoch["baseline"]["seconds"] == epoch["ours"]["baseline_seconds"]


def test_baseline_steps_run_one_batch_after_each_of_ours_and_time_them_apart():
    """Each of ours' steps advances every baseline epoch by one batch; the time of those batches is
    what is taken out of our epoch's clock, and the end of the epoch (its one read) is not. Each of
    our epochs starts a new epoch of each baseline and gets its own times."""
    class State:  # the callback reads nothing from the training state
        pass

    batches = {"baseline": [], "baseline_fused_adam": []}
    epochs_started = {name: 0 for name in batches}

    def epoch(name):
        def start():
            epochs_started[name] += 1
            for index in range(3):
                time.sleep(0.01)
                batches[name].append((epochs_started[name], index))
                yield torch.tensor(10.0 * epochs_started[name] + index)
        return start

    interleaved = BaselineSteps({name: epoch(name) for name in batches}, torch.device("cpu"))
    for epoch_index in range(2):
        for step in range(3):
            interleaved.on_step(State(), torch.tensor(0.0))
            assert all(done[-1] == (epoch_index + 1, step) for done in batches.values())
        during = interleaved.during_ours[epoch_index]
        interleaved.on_epoch_end(State())
        assert interleaved.during_ours[epoch_index] == during >= 0.06  # six batches of at least 10 ms
        assert all(seconds[epoch_index] >= 0.03 for seconds in interleaved.seconds.values())
        assert sum(seconds[epoch_index] for seconds in interleaved.seconds.values()) >= during
        assert interleaved.totals == {name: torch.tensor(10.0 * (epoch_index + 1) + 2) for name in batches}
    assert len(interleaved.during_ours) == 2 and all(len(seconds) == 2 for seconds in interleaved.seconds.values())


@pytest.fixture
def digits_setup():
    return build(bench_config(Settings(dataset="digits", device="cpu"), "meanfield", 128))


def test_baseline_meanfield_loss_is_minus_the_analytic_elbo(digits_setup):
    """With the same weights, the baseline's closed-form-KL loss averages to -ppl_vae's evaluated ELBO."""
    x = digits_setup.dataset.test
    plain = plain_copy(digits_setup)
    torch.manual_seed(0)
    with torch.no_grad():
        plain_elbo = -sum(baseline.meanfield_loss(plain, x).item() for _ in range(200)) / (200 * len(x))
    ours = evaluate_elbo(digits_setup.vae.model, digits_setup.vae.guide, x, num_particles=200)["elbo"]
    assert plain_elbo == pytest.approx(ours, abs=0.05)


def test_baseline_log_weights_match_the_traces_of_the_same_vae(digits_setup):
    """log p(x, z) - log q(z|x) on the same draws: the baseline's and ppl_vae's agree to float precision."""
    x = digits_setup.dataset.test[:20]
    plain, vae = plain_copy(digits_setup), digits_setup.vae
    with torch.no_grad():
        torch.manual_seed(1)
        ours = log_weights(vae.model, vae.guide, x, num_particles=7, layout=PlateLayout(particle_dim=-2))
        torch.manual_seed(1)
        theirs = baseline.log_weights(plain, x, 7)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4)
    bound = -baseline.iwae_loss(plain, x, 7) / len(x)
    assert math.isfinite(bound.item()) and bound.item() <= 0
