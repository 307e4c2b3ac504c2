"""`tunewire jobs watch`: events as lines, and a live bar with step, loss and ETA."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from bridge.cli.client import Client
from tunewire.v1 import events_pb2, jobs_pb2

Event = events_pb2.Event
LEVEL_STYLE = {Event.LEVEL_WARN: "yellow", Event.LEVEL_ERROR: "red"}


def watch(client: Client, job_id: str, after: int, console: Console) -> str:
    """Print events until the job ends; return its final state name."""
    state = ""
    bar = Progress(
        TextColumn("[bold]step {task.completed}/{task.total}"),
        BarColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    task = None
    stream = client.jobs.StreamJobEvents(
        # Batches: the replay of a long job's history comes in a few messages, not thousands.
        jobs_pb2.StreamJobEventsRequest(job_id=job_id, after_sequence=after, max_batch_size=1000),
        metadata=client.metadata,
    )
    with bar:
        for event in (event for reply in stream for event in reply.events):
            data = dict(event.data)
            if event.type == Event.TYPE_METRICS and "step" in data:
                if task is None:
                    task = bar.add_task("train", total=int(data.get("total_steps", 0)), loss="…")
                step, total = int(data["step"]), int(data.get("total_steps", 0))
                bar.update(task, completed=step, loss=f"{data.get('train_loss', 0):.3f}")
                # Keep a line at every tenth of the run, so the log outlives the bar.
                if total and (step == total or step % max(1, total // 10) == 0):
                    console.print(f"[dim]{event.sequence:>4}[/dim] {escape(event.message)}")
                continue
            if event.type == Event.TYPE_STATE:
                state = str(data.get("state", state))
            style = LEVEL_STYLE.get(event.level, "")
            line = f"[dim]{event.sequence:>4}[/dim] {escape(event.message)}"
            console.print(f"[{style}]{line}[/{style}]" if style else line)
            if rendered := data.get("rendered"):  # the template check's example, as trained
                for text in str(rendered).rstrip("\n").splitlines():
                    console.print(f"     {text}", markup=False, highlight=False)
    return state
