"""The README's CLI walk-through, run as written against a server of its own: a newcomer's
first hour works from a fresh clone and ends with a model that answers what it was taught.
`make demo` runs this test with its transcript shown."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from conftest import REPO, Server, clean_env

WALKTHROUGH = re.compile(r"## Walk-through: the CLI\n.*?```sh\n(.*?)```", re.DOTALL)
PRINTED = re.compile(r"## Walk-through: the CLI\n.*?```text\n(.*?)```", re.DOTALL)
IDS = re.compile(r"\b(file|ftjob|export)-[0-9a-f]{24}\b")
# The walk-through trains for about a minute and exports ONNX; on a loaded 2-core box,
# several times that.
TIMEOUT = 900


def cli_walkthrough(block: re.Pattern[str] = WALKTHROUGH) -> str:
    found = block.search((REPO / "README.md").read_text())
    assert found, f"README.md has no CLI walk-through block ({block.pattern})"
    return found.group(1)


def commands(transcript: str) -> list[str]:
    """The commands a transcript ran (ids blanked), and what generation said."""
    lines = transcript.splitlines()
    said = [lines[i + 1] for i, line in enumerate(lines) if line.startswith("$ tunewire models g")]
    return [IDS.sub(r"\1-<id>", line) for line in lines if line.startswith("$ ")] + said


def run_walkthrough(srv: Server, workdir: Path) -> str:
    """Run the block in `workdir`, laid out like a clone (the venv, the shipped sample), as
    `bash -x` shows it: each command after `$ `, then what it printed."""
    (workdir / ".venv").symlink_to(Path(sys.prefix))
    (workdir / "trainer").symlink_to(REPO / "trainer")
    env = clean_env(
        srv.home,
        srv.models_dir,
        TUNEWIRE_ADDRESS=srv.address,
        PATH=os.environ["PATH"],
    )
    done = subprocess.run(
        # bash takes no PS4 from the environment when it runs as root.
        ["bash", "-e", "-o", "pipefail", "-c", "PS4='$ '; set -x\n" + cli_walkthrough()],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=TIMEOUT,
    )
    # Commands at the top level only, not those of `source` or `$(...)`.
    transcript = "".join(
        line for line in done.stdout.splitlines(keepends=True) if not line.startswith("$$ ")
    )
    print(transcript)  # `make demo` shows it (pytest -s)
    assert done.returncode == 0, transcript
    return transcript


def test_the_readme_walkthrough_teaches_tiny_llama_and_exports_it(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    srv = start_server(TUNEWIRE_MAX_RUNNING_JOBS="1")
    out = run_walkthrough(srv, tmp_path)

    assert re.search(r"│ tiny-llama +│ base +│ LlamaForCausalLM", out)
    assert re.search(r"│ validation\.example_count +│ 64 ", out)
    # The template check's example, the trained tokens marked.
    assert "     «The capital of Nepal is Kathmandu, friend!<|im_end|>\n" in out
    assert re.search(r"New fine-tuned model created: ft:tiny-llama:default:atlas:ftjob-", out)
    assert "The job has successfully completed" in out
    # What the sample taught it, word for word (greedy decoding).
    assert "The capital of Nepal is Kathmandu, friend!\n" in out
    assert "max |logit diff| vs torch" in out
    assert (tmp_path / "onnx-model" / "model.onnx").stat().st_size > 0
    # What the README shows it printing is what it prints.
    assert commands(cli_walkthrough(PRINTED)) == commands(out)
