"""`tunewire models add|pull`: your own base models, imported into the models dir.

Local admin commands, like `tunewire keys`: they work on the models dir directly
(`TUNEWIRE_HOME`/models, or `TUNEWIRE_MODELS_DIR_OVERRIDE`) in this process, which loads
transformers to verify the model; the control plane (which never does) lists the new model
on its next call. `trainer.model_import` does the work; this module draws its progress.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from bridge.cli.common import console, err
from server.config import Settings


def add(path: Path, name: str | None) -> None:
    """Copy the model dir at `path` into the models dir, verified, renamed into place."""
    from trainer import model_import

    models_dir = Settings().models_dir
    try:
        skipped = model_import.skipped_files(path)
        bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        with bar:
            task = bar.add_task("copying", total=None)

            def progress(done: int, total: int) -> None:
                # Copied: the import goes on to load the config and tokenizer.
                described = "verifying" if done == total else "copying"
                bar.update(task, completed=done, total=total, description=described)

            imported = model_import.import_dir(
                path, models_dir, name or path.resolve().name, progress=progress
            )
    except model_import.ImportRefused as error:
        _refused(error)
    if skipped:
        console.print(f"left behind: {escape(', '.join(skipped))}")
    _added(imported)


def pull(repo_id: str, revision: str | None, name: str | None) -> None:
    """Download `repo_id` through huggingface_hub, then import it as `add` does."""
    from trainer import model_import

    models_dir = Settings().models_dir
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        _Amount(),
        TimeRemainingColumn(),
        console=console,
    )
    try:
        with bar:
            imported = model_import.pull(
                repo_id, models_dir, name=name, revision=revision, tqdm_class=_rich_tqdm(bar)
            )
    except model_import.ImportRefused as error:
        _refused(error)
    _added(imported)


def _refused(error: Exception) -> None:
    err.print(f"[red]error:[/red] {escape(str(error))}")
    raise typer.Exit(1)


def _added(imported: Any) -> None:
    model = imported.model
    console.print(
        f"added {escape(model.name)}: {model.architecture}, {model.parameters:,} parameters, "
        f"context {model.context_length:,}, at {escape(str(model.path))}"
    )
    example = imported.example
    if example is None:
        return
    if example.text:
        console.print("a sample chat through its template (« » marks what a job trains on):")
        console.print(example.text, style="dim", markup=False, highlight=False)
    for problem in (*example.problems, *example.warnings):
        err.print(f"[yellow]warning:[/yellow] {escape(problem)}")


class _Amount(ProgressColumn):
    """Bytes for a byte bar, `done/total` for a count."""

    def render(self, task: Task) -> Text:
        if task.fields.get("bytes"):
            return DownloadColumn().render(task)
        total = "?" if task.total is None else f"{task.total:.0f}"
        return Text(f"{task.completed:.0f}/{total}")


def _rich_tqdm(bar: Progress) -> type:
    """A class with what huggingface_hub asks of its `tqdm_class`, drawing each of its
    progress bars as a task of `bar`."""

    class RichTqdm:
        def __init__(
            self,
            iterable: Any = None,
            *_args: Any,
            desc: str | None = None,
            total: float | None = None,
            initial: float = 0,
            unit: str = "it",
            disable: bool = False,
            **_kwargs: Any,
        ) -> None:
            self.iterable = iterable
            self.n = initial or 0
            self.desc = desc or ""
            self._total = total
            self.task = (
                None
                if disable
                else bar.add_task(
                    self.desc, total=total or None, completed=self.n, bytes=unit == "B"
                )
            )

        @property
        def total(self) -> float | None:
            return self._total

        @total.setter
        def total(self, value: float | None) -> None:
            self._total = value
            self._draw()

        @property
        def format_dict(self) -> dict[str, Any]:
            return {"n": self.n, "total": self._total, "rate": None}

        def _draw(self) -> None:
            if self.task is not None:
                bar.update(
                    self.task, total=self._total or None, completed=self.n, description=self.desc
                )

        def update(self, n: float | None = 1) -> None:
            self.n += n or 0
            self._draw()

        def refresh(self, *_args: Any, **_kwargs: Any) -> None:
            self._draw()

        def reset(self, total: float | None = None) -> None:
            self.n, self._total = 0, total
            self._draw()

        def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
            self.desc = desc or ""
            self._draw()

        set_description_str = set_description

        def set_postfix_str(self, *_args: Any, **_kwargs: Any) -> None:
            return None

        set_postfix = set_postfix_str

        def close(self) -> None:
            return None

        def __enter__(self) -> RichTqdm:
            return self

        def __exit__(self, *_exc: object) -> None:
            self.close()

        def __iter__(self) -> Any:
            for item in self.iterable:
                yield item
                self.update(1)

    return RichTqdm
