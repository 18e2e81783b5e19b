"""Loss curves as a PNG: a person would rather look at them than read a log."""

from pathlib import Path

from vaswani.configuration.files import written_atomically


def plot_loss_curves(runs: dict[str, "TrainingState"], path: Path, title: str) -> Path:  # noqa: F821
    """Training loss (lines) and held-out loss (markers) against steps, one colour per run."""
    # A Figure of its own draws straight to the file through the Agg canvas: no pyplot, so no backend is switched
    # for the user's process. Imported here, because matplotlib takes a second to import.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5), dpi=120, layout="tight")
    axes = figure.subplots()
    for index, (name, state) in enumerate(runs.items()):
        colour = f"C{index}"  # the same colour of the default cycle for a run's two curves
        for log, style, kind in ((state.train_log, "-", "training"), (state.eval_log, "o--", "held-out")):
            steps, losses = [entry["step"] for entry in log], [entry["loss"] for entry in log]
            axes.plot(steps, losses, style, color=colour, label=f"{name}: {kind}")
    axes.set(xlabel="optimiser step", ylabel="cross-entropy (nats per token)", title=title)
    axes.grid(alpha=0.3)
    axes.legend()
    with written_atomically(path) as temporary:  # never through a link, never half-written
        figure.savefig(temporary, format="png")
    return path
