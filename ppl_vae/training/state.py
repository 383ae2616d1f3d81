"""Where training stands: counters, the epoch in progress, the history and the random states.

Everything in a :class:`TrainingState` goes into a checkpoint (:meth:`TrainingState.state_dict`), so a
run resumed from it, even mid-epoch, continues exactly as if it had never stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch


@dataclass
class TrainingState:
    """Where training stands. ``history`` holds one record per finished epoch: ``epoch``, ``step``,
    ``beta``, ``train_<term>`` (the mean of each of the objective's terms over the epoch's batches,
    nats per datapoint), the objective's status, ``seconds`` and ``epoch_seconds``; callbacks add
    more (``test_<term>``)."""

    generator: torch.Generator  # draws each epoch's batch order (and dynamic binarization)
    epoch: int = 0  # epochs finished
    step: int = 0  # optimizer steps taken
    epoch_step: int = 0  # batches done in the epoch in progress
    beta: float = 1.0  # the KL weight of the last step
    term_sums: dict[str, torch.Tensor] = field(default_factory=dict)  # the epoch's terms, summed over datapoints
    seen: int = 0  # datapoints in the epoch's batches so far
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0  # training time before this session (a resumed run's earlier sessions)
    epoch_start: torch.Tensor | None = None  # the generator's state when the epoch in progress began
    session_start: float = field(default_factory=time.perf_counter)
    epoch_clock: float = field(default_factory=time.perf_counter)

    def begin_epoch(self) -> None:
        self.epoch_start = self.generator.get_state()
        self.epoch_clock = time.perf_counter()

    def add_step(self, batch_size: int, terms: dict[str, torch.Tensor]) -> None:
        for name, value in terms.items():
            self.term_sums[name] = self.term_sums.get(name, 0.0) + value
        self.seen += batch_size
        self.step += 1
        self.epoch_step += 1

    def epoch_means(self) -> dict[str, float]:
        """The mean of each term over the epoch's datapoints so far (one host sync for all)."""
        if not self.term_sums:
            return {}
        values = (torch.stack(list(self.term_sums.values())) / self.seen).tolist()
        return dict(zip(self.term_sums, values))

    def end_epoch(self, status: dict[str, Any]) -> dict[str, Any]:
        """Close the epoch: append and return its history record."""
        self.epoch += 1
        record = {"epoch": self.epoch, "step": self.step, "beta": self.beta,
                  **{f"train_{name}": value for name, value in self.epoch_means().items()}, **status,
                  "seconds": self.elapsed(), "epoch_seconds": time.perf_counter() - self.epoch_clock}
        self.history.append(record)
        self.epoch_step, self.term_sums, self.seen = 0, {}, 0
        return record

    def elapsed(self) -> float:
        """Training time in seconds, all sessions together."""
        return self.seconds + time.perf_counter() - self.session_start

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to go on exactly from here, random number generators included."""
        return {
            "epoch": self.epoch, "step": self.step, "epoch_step": self.epoch_step, "beta": self.beta,
            "term_sums": {name: float(value) for name, value in self.term_sums.items()}, "seen": self.seen,
            "history": self.history, "seconds": self.elapsed(),
            "data_generator": self.epoch_start if self.epoch_step else self.generator.get_state(),
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        """Go on from a :meth:`state_dict`; a TypeError or ValueError if it is not one."""
        counters = {name: state[name] for name in ("epoch", "step", "epoch_step", "seen")}
        for name, value in counters.items():
            if type(value) is not int or value < 0:
                raise TypeError(f"training state {name!r} must be an integer >= 0, got {value!r}")
        for name in ("beta", "seconds"):
            if not isinstance(state[name], (int, float)) or isinstance(state[name], bool):
                raise TypeError(f"training state {name!r} must be a number, got {state[name]!r}")
        history, term_sums = state["history"], state["term_sums"]
        if not isinstance(history, list) or [record.get("epoch") if isinstance(record, dict) else None
                                             for record in history] != list(range(1, counters["epoch"] + 1)):
            raise ValueError(f"the training history does not hold one record for each of the {counters['epoch']} "
                             "epochs done")
        if not all(isinstance(value, (int, float, type(None))) and not isinstance(value, bool)
                   for record in history for value in record.values()):
            raise TypeError("the training history holds values that are not numbers")
        if not isinstance(term_sums, dict):
            raise TypeError(f"training state 'term_sums' must be a mapping, got {term_sums!r}")
        self.epoch, self.step, self.epoch_step, self.seen = (counters[name] for name in counters)
        self.beta, self.history, self.seconds = float(state["beta"]), history, float(state["seconds"])
        self.term_sums = {name: torch.tensor(float(value), device=device) for name, value in term_sums.items()}
        self.generator.set_state(state["data_generator"])
        set_rng_state(state["rng"])
        self.session_start = time.perf_counter()


def rng_state() -> dict[str, Any]:
    """The state of every random number generator Pyro draws from (Python, NumPy, torch, CUDA)."""
    state = pyro.util.get_rng_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    pyro.util.set_rng_state(state)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
