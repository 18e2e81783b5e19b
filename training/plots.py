"""Loss curves as a PNG: a person would rather look at them than read a log."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on training machines
import matplotlib.pyplot as plt  # noqa: E402


def plot_loss_curves(runs: dict[str, "TrainingState"], path: Path, title: str) -> Path:  # noqa: F821
    """Training loss (lines) and held-out loss (markers) against steps, one colour per run."""
    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=120)
    for (name, state), colour in zip(runs.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        steps = [entry["step"] for entry in state.train_log]
        axes.plot(steps, [entry["loss"] for entry in state.train_log], color=colour, label=f"{name}: training")
        eval_steps = [entry["step"] for entry in state.eval_log]
        axes.plot(eval_steps, [entry["loss"] for entry in state.eval_log], "o--", color=colour, label=f"{name}: held-out")
    axes.set(xlabel="optimiser step", ylabel="cross-entropy (nats per token)", title=title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
