"""Bad input: generated training files (hypothesis), hostile upload names and sizes, and
hostile base models (pickles, remote code, paths and symlinks out of the models dir).

The validator properties run on thousands of generated lines; uploads and models go
through a real server and real trainer processes. A hostile model's payload would create a
sentinel file if it ever ran: the tests check it never appears.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from conftest import Job, Org, Server, chat_lines, fails, launch, upload_requests
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from server.validation import validate_file
from tunewire.v1 import files_pb2, jobs_pb2

File = files_pb2.File
Code = grpc.StatusCode
FILE_PROBLEMS = {"empty_file", "invalid_n_examples"}


# --- the validator, property-based ------------------------------------------------------------

text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\n"), max_size=40)
nonblank = text.filter(lambda s: s.strip())


@st.composite
def chat_line(draw: st.DrawFn) -> bytes:
    record = {
        "messages": [
            {"role": "user", "content": draw(nonblank)},
            {"role": "assistant", "content": draw(nonblank)},
        ]
    }
    line = json.dumps(record, ensure_ascii=draw(st.booleans())).encode()
    return line + draw(st.sampled_from([b"", b"\r", b"  "]))


def not_json(s: str) -> bool:
    try:
        json.loads(s)
    except (ValueError, RecursionError):
        return bool(s.strip())
    return False


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)

# kind -> lines of that kind; "bad" kinds must each get a problem on their line,
# "good" kinds never (while every record in the file is chat).
KINDS = {
    "chat": chat_line(),
    "blank": st.sampled_from([b"", b" ", b"\t", b"\r"]),
    "not_json": text.filter(not_json).map(str.encode),
    "bad_utf8": st.tuples(
        chat_line(), st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])
    ).flatmap(lambda t: st.integers(0, len(t[0])).map(lambda i: t[0][:i] + t[1] + t[0][i:])),
    "not_an_object": st.sampled_from([b"1", b"[]", b'"x"', b"null", b"true", b"[{}]"]),
    "deep": st.integers(500, 50_000).map(lambda n: b"[" * n + b"]" * n),
    "wrong_chat": st.sampled_from(
        [
            b'{"messages": []}',
            b'{"messages": [{"role": "robot", "content": "x"}]}',
            b'{"messages": [{"role": "user", "content": 3}]}',
            b'{"messages": "no"}',
            b'{"messages": [{"role": "user", "content": "only a question"}]}',
        ]
    ),
    "any_json": json_values.map(lambda v: json.dumps(v).encode()),
}
GOOD, BAD = {"chat", "blank"}, {"not_json", "bad_utf8", "not_an_object", "deep", "wrong_chat"}

files = st.tuples(
    st.lists(
        st.sampled_from(sorted(KINDS)).flatmap(lambda k: KINDS[k].map(lambda v: (k, v))),
        min_size=5,
        max_size=80,
    ),
    st.booleans(),  # final newline
    st.booleans(),  # byte-order mark
)


def check_file(lines: list[tuple[str, bytes]], final_newline: bool, bom: bool) -> int:
    """Validate one generated file and check every property; returns its line count."""
    data = b"\n".join(line for _, line in lines) + (b"\n" if final_newline and lines else b"")
    raw = (b"\xef\xbb\xbf" if bom else b"") + data
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as f:
        f.write(raw)
        f.flush()
        report = validate_file(f.name, max_problems=1_000_000)
        capped = validate_file(f.name, max_problems=3)

    # Lines as a reader counts them: a last line without its newline still counts.
    expected_lines = data.count(b"\n") + (0 if not data or data.endswith(b"\n") else 1)
    assert report.lines == expected_lines
    assert report.problem_count == len(report.problems)
    at = {p.line for p in report.problems}
    for problem in report.problems:
        assert 0 <= problem.line <= report.lines, problem
        assert (problem.line == 0) == (problem.code in FILE_PROBLEMS), problem
        assert problem.code and problem.message and problem.path.startswith("$"), problem
    lines_of = {kind: [i for i, (k, _) in enumerate(lines, 1) if k == kind] for kind in KINDS}
    # Every bad line is reported, on its own line number.
    for kind in BAD:
        missing = [i for i in lines_of[kind] if i not in at]
        assert not missing, (kind, missing, report.problems)
    if not lines_of["any_json"]:
        # Only chat records: good lines are never blamed, each is one example.
        assert not at & {i for kind in GOOD for i in lines_of[kind]}, report.problems
        assert report.examples == len(lines_of["chat"])
    # The cap keeps the first problems and still counts them all.
    assert capped.problems == report.problems[:3]
    assert capped.problem_count == report.problem_count
    assert report.token_estimate >= 0
    return report.lines


@given(files)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_validator_never_crashes_and_puts_every_problem_on_its_line(file) -> None:
    check_file(*file)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_validator_properties_at_length() -> None:
    lines = []

    @given(files)
    @settings(max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    def check(file) -> None:
        lines.append(check_file(*file))

    check()
    print(f"\nFIGURE validator: {len(lines)} files, {sum(lines)} lines, 0 crashes")


# Near-misses of a plain chat record: the shapes the validator's msgspec fast path sees
# first. Written as raw text so that keys can repeat (JSON takes the last; so must it).
near_roles = st.sampled_from(["user", "assistant", "system", "tool", "Chatbot", "developer", ""])
near_values = (
    near_roles
    | st.sampled_from(["", "\\ud800", "a\\u0000b", "é", "\\n"])
    | text
    | st.integers(-1, 2)
    | st.none()
)


def json_text(value: object) -> str:
    # Escapes written above as \\uXXXX stay escapes; json.dumps would double them.
    return f'"{value}"' if isinstance(value, str) and "\\" in value else json.dumps(value)


@st.composite
def near_chat_line(draw: st.DrawFn) -> bytes:
    def members(pairs: list[tuple[str, object]]) -> str:
        return "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in pairs) + "}"

    key = st.sampled_from(["role", "content", "weight", "name", "extra"])
    plain = st.tuples(near_roles, near_values).map(
        lambda rc: [("role", json_text(rc[0])), ("content", json_text(rc[1]))]
    )
    loose = st.lists(st.tuples(key, near_values.map(json_text)), max_size=4)
    messages = [members(draw(plain | loose)) for _ in range(draw(st.integers(0, 4)))]
    top = [("messages", "[" + ", ".join(messages) + "]")]
    for _ in range(draw(st.integers(0, 2))):
        top.append(draw(st.sampled_from([("messages", '"no"'), ("tools", "[]"), ("x", "1")])))
    return (draw(st.sampled_from(["", " "])) + members(draw(st.permutations(top)))).encode()


@given(st.lists(near_chat_line(), min_size=1, max_size=4))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_chat_fast_path_accepts_only_what_the_full_path_accepts(lines: list[bytes]) -> None:
    from server.validation import _plain_chats, _trained_chars
    from trainer.formats import Format, parse_record

    end, chars = _plain_chats(lines, 0)
    full = 0
    for number, raw in enumerate(lines[:end], 1):
        record = json.loads(raw.decode())
        for fmt in (None, Format.CHAT):
            example, problems = parse_record(record, number, fmt)
            assert example is not None and example.format is Format.CHAT, (raw, problems)
        full += _trained_chars(example)
    assert chars == full


valid_chat_line = st.tuples(text.filter(bool), text.filter(bool)).map(
    lambda qa: json.dumps(
        {"messages": [{"role": "user", "content": qa[0]}, {"role": "assistant", "content": qa[1]}]}
    ).encode()
)


@st.composite
def chat_lines_joined(draw: st.DrawFn) -> tuple[bytes, str]:
    """Valid chat records one per line, but for at most one defect: a record only nearly
    valid, or what only looks like one line per record (a blank, padded or CRLF line, a
    record split over two lines, two records on one line)."""
    lines = draw(st.lists(valid_chat_line, min_size=1, max_size=6))
    separators = [b"\n"] * len(lines)
    at = draw(st.integers(0, len(lines) - 1))
    defect = draw(st.sampled_from(["none", "near", "separator", "split"]))
    if defect == "near":
        lines[at] = draw(near_chat_line())
    elif defect == "separator":
        separators[at] = draw(st.sampled_from([b"\r\n", b"\n\n", b" \n", b"\n ", b" "]))
    elif defect == "split":
        lines[at] = lines[at].replace(b", ", b",\n", 1)
    joined = b"".join(line + separator for line, separator in zip(lines, separators, strict=True))
    return joined if joined.endswith(b"\n") else joined + b"\n", defect


@given(chat_lines_joined())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_block_of_chats_is_accepted_whole_only_as_the_full_path_accepts_each_line(
    drawn: tuple[bytes, str],
) -> None:
    from server.validation import _Body, _trained_chars
    from trainer.formats import Format, parse_record

    joined, defect = drawn
    raw = b"the line before\n" + joined + b"the next block's"
    body = _Body(raw, raw.index(b"\n") + 1, raw.rindex(b"\n") + 1, 8 << 20)
    whole = body.plain_chats()
    event("accepted whole" if whole else "declined")
    if whole is None:
        assert defect != "none"  # it may decline a block only for what is wrong in it
        return
    count, chars = whole
    lines = joined[:-1].split(b"\n")
    assert count == len(lines)
    full = 0
    for number, line in enumerate(lines, 1):
        example, problems = parse_record(json.loads(line.decode()), number, Format.CHAT)
        assert example is not None and example.format is Format.CHAT, (line, problems)
        full += _trained_chars(example)
    assert chars == full


@given(st.binary(max_size=4096), st.sampled_from(["data.jsonl", "notes.txt", "doc.md"]))
@settings(max_examples=250, deadline=None)
def test_validator_survives_arbitrary_bytes(data: bytes, filename: str) -> None:
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        report = validate_file(f.name, filename=filename, max_problems=1_000_000)
    assert all(0 <= p.line <= report.lines for p in report.problems)
    assert report.problem_count == len(report.problems)
    assert report.ok == (report.problem_count == 0)


# --- hostile uploads --------------------------------------------------------------------------


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def raw_upload(srv: Server, org: Org, metadata: bytes, chunk: bytes = b"data") -> files_pb2.File:
    """An upload whose first message is hand-built bytes: a filename that is not UTF-8
    cannot be built with the generated classes."""
    first = b"\x0a" + bytes([len(metadata)]) + metadata
    second = files_pb2.UploadFileRequest(chunk=chunk).SerializeToString()
    with srv.channel() as channel:
        call = channel.stream_unary(
            "/tunewire.v1.FileService/UploadFile",
            request_serializer=lambda b: b,
            response_deserializer=files_pb2.File.FromString,
        )
        return call(iter([first, second]), metadata=org.client.metadata, timeout=30)


def test_hostile_filenames_are_data_only_and_write_nothing_outside_the_blob_root(
    server: Server, tmp_path: Path
) -> None:
    org = server.new_org("hostile-names")
    outside = tmp_path / "outside"
    names = [
        "../../../escape.jsonl",
        "../" * 40 + "etc/passwd",
        str(outside / "absolute.jsonl"),
        "/etc/cron.d/evil",
        "a\x00b.jsonl",
        "\x00",
        "..",
        ".",
        "~/.ssh/authorized_keys",
        "C:\\Windows\\System32\\evil.dll",
        "..\\..\\escape.jsonl",
        "%2e%2e%2fescape.jsonl",
        "name\nwith\nnewlines.jsonl",
        "\u202egnp.exe",
        "ü" * 255,  # 255 characters, 510 bytes: over any filesystem's name limit
        "x" * 255,
    ]
    root = server.home.parent
    before = tree(root)
    accepted = []
    for name in names:
        record = org.upload(chat_lines(1, "hostile"), name, File.PURPOSE_USER_DATA)
        assert record.filename == name
        accepted.append(record.id)
        got = org.files.GetFile(files_pb2.GetFileRequest(file_id=record.id))
        assert got.filename == name
    for too_long in ("y" * 256, "z" * 100_000):
        failure = fails(
            Code.INVALID_ARGUMENT,
            org.files.UploadFile,
            upload_requests(b"x", too_long, File.PURPOSE_USER_DATA),
        )
        assert "metadata.filename" in failure.violations
    # Not UTF-8: proto3 strings must be, so the request is malformed.
    for name in (b"\xff\xfe.jsonl", b"ok\xc3(.jsonl", b"\xed\xa0\x80.jsonl"):
        metadata = b"\x0a" + bytes([len(name)]) + name + b"\x10\x03"
        fails(Code.INVALID_ARGUMENT, raw_upload, server, org, metadata)

    created = tree(root) - before - {f"{server.home.name}/blobs/files"}
    expected = {f"{server.home.name}/blobs/files/{i}" for i in accepted}
    assert created == expected, created - expected
    assert not outside.exists()
    assert os.listdir(server.home / "blobs" / "tmp") == []
    listed = org.files.ListFiles(files_pb2.ListFilesRequest(page_size=100)).files
    assert sorted(f.id for f in listed) == sorted(accepted)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def upload_big(srv: Server, org: Org, mib: int) -> tuple[files_pb2.File, float]:
    """Stream `mib` MiB at full speed; returns the record and the server's RSS growth."""
    block = os.urandom(1 << 20)

    def requests() -> Iterator[files_pb2.UploadFileRequest]:
        yield files_pb2.UploadFileRequest(
            metadata=files_pb2.UploadFileMetadata(
                filename="big.bin", purpose=File.PURPOSE_USER_DATA
            )
        )
        for _ in range(mib):
            yield files_pb2.UploadFileRequest(chunk=block)

    pid = srv.process.pid
    baseline = peak = rss_mib(pid)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.05):
            peak = max(peak, rss_mib(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        record = org.files.UploadFile(requests(), timeout=600)
    finally:
        done.set()
        sampler.join()
    assert record.bytes == mib << 20
    return record, peak - baseline


def test_a_large_upload_keeps_server_memory_flat(server: Server) -> None:
    org = server.new_org("big-upload")
    record, growth = upload_big(server, org, 128)
    assert growth < 48, f"server RSS grew {growth:.0f} MiB for a 128 MiB upload"
    org.files.DeleteFile(files_pb2.DeleteFileRequest(file_id=record.id))


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_gigabyte_upload_keeps_server_memory_flat(
    start_server: Callable[..., Server],
) -> None:
    srv = start_server(TUNEWIRE_MAX_UPLOAD_BYTES=str(2 << 30))
    started = time.monotonic()
    _, growth = upload_big(srv, srv.default, 1024)
    took = time.monotonic() - started
    print(f"\nFIGURE big-upload: 1 GiB in {took:.1f} s, server RSS +{growth:.0f} MiB")
    assert growth < 48


# --- hostile base models ----------------------------------------------------------------------


class Payload:
    """Unpickling this runs `touch SENTINEL`: what a malicious weight file does."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


REMOTE_CODE = """
import pathlib
pathlib.Path({sentinel!r}).touch()
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
class EvilConfig(LlamaConfig):
    model_type = "evil"
class EvilForCausalLM(LlamaForCausalLM):
    config_class = EvilConfig
class EvilTokenizer(PreTrainedTokenizerFast):
    pass
"""


def hostile_models(models: Path, tiny: Path, outside: Path, sentinel: Path) -> dict[str, Path]:
    """Model dirs that would run code or read outside the models dir if loaded carelessly."""
    made: dict[str, Path] = {}

    def model(path: Path, *, weights: bool = True, config: dict | None = None) -> Path:
        shutil.copytree(tiny, path)
        if not weights:
            (path / "model.safetensors").unlink()
        if config:
            document = json.loads((path / "config.json").read_text())
            document.update(config)
            (path / "config.json").write_text(json.dumps(document))
        return path

    poison = pickle.dumps(Payload(sentinel))
    # Only pickled weights: never a base model.
    made["pickle-only"] = model(models / "pickle-only", weights=False)
    (made["pickle-only"] / "pytorch_model.bin").write_bytes(poison)
    # Safetensors plus pickles beside them (weights, training args, an optimizer).
    made["pickle-beside"] = model(models / "pickle-beside")
    for name in ("pytorch_model.bin", "training_args.bin", "optimizer.pt", "rng_state.pth"):
        (made["pickle-beside"] / name).write_bytes(poison)
    # Asks for its own code, for the model and the tokenizer.
    remote = {
        "auto_map": {
            "AutoConfig": "evil.EvilConfig",
            "AutoModelForCausalLM": "evil.EvilForCausalLM",
        }
    }
    made["remote-code"] = model(models / "remote-code", config=remote)
    made["remote-type"] = model(
        models / "remote-type",
        config={**remote, "model_type": "evil", "architectures": ["EvilForCausalLM"]},
    )
    for name in ("remote-code", "remote-type"):
        (made[name] / "evil.py").write_text(REMOTE_CODE.format(sentinel=str(sentinel)))
        tokenizer_config = json.loads((made[name] / "tokenizer_config.json").read_text())
        tokenizer_config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
        tokenizer_config["tokenizer_class"] = "EvilTokenizer"
        (made[name] / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    # A complete, poisoned model outside the models dir, and a symlink to it from inside.
    evil = model(outside / "evil")
    (evil / "pytorch_model.bin").write_bytes(poison)
    (evil / "evil.py").write_text(REMOTE_CODE.format(sentinel=str(sentinel)))
    (models / "linked").symlink_to(evil, target_is_directory=True)
    made["linked"] = models / "linked"
    return made


@pytest.fixture(scope="module")
def hostile(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path
) -> Iterator[tuple[Server, Path, Path]]:
    """A server of its own whose models dir holds tiny-llama and the hostile models; two
    trainer slots, and one attempt per job, so a refused model fails at once."""
    root = tmp_path_factory.mktemp("hostile-models")
    models, outside, sentinel = root / "models", root / "outside", root / "SENTINEL"
    models.mkdir()
    outside.mkdir()
    shutil.copytree(models_dir / "tiny-llama", models / "tiny-llama")
    hostile_models(models, models / "tiny-llama", outside, sentinel)
    srv = launch(
        root / "home",
        models,
        root / "logs",
        TUNEWIRE_MAX_RUNNING_JOBS="2",
        TUNEWIRE_MAX_ATTEMPTS="1",
        TUNEWIRE_HEARTBEAT_SECONDS="0.5",
    )
    try:
        yield srv, models, sentinel
    finally:
        srv.terminate()
        srv.kill()
    assert not sentinel.exists(), "a hostile model's code ran"


@pytest.mark.parametrize(
    "base_model",
    [
        "pickle-only",
        "remote-code",
        "remote-type",
        "linked",
        "../outside/evil",
        "linked/../tiny-llama",
        "tiny-llama/../../outside/evil",
        "/etc",
        "tiny-llama\x00",
        "tiny-llama\\..\\linked",
        "",
    ],
)
def test_a_base_model_that_is_not_a_safe_model_dir_is_refused_at_create(
    hostile: tuple[Server, Path, Path], base_model: str
) -> None:
    srv, _, sentinel = hostile
    org = srv.default
    record = org.upload(chat_lines(12, "hostile"))
    failure = fails(Code.INVALID_ARGUMENT, org.create_job, record.id, base_model=base_model)
    assert "job.base_model" in failure.violations
    assert not sentinel.exists()


def test_base_models_lists_only_safe_model_dirs(hostile: tuple[Server, Path, Path]) -> None:
    from tunewire.v1 import models_pb2

    srv, _, _ = hostile
    listed = srv.default.models.ListBaseModels(models_pb2.ListBaseModelsRequest()).base_models
    names = {m.id for m in listed}
    assert "tiny-llama" in names
    assert not names & {"pickle-only", "remote-code", "remote-type", "linked"}


def test_models_that_pass_create_never_run_hostile_code(
    hostile: tuple[Server, Path, Path],
) -> None:
    """Through real trainers: safetensors beside pickles train on the safetensors alone; a
    model dir swapped after CreateJob, for a symlink out of the models dir or for a model
    asking for remote code, is refused when the trainer asks for it, and the job fails at
    once saying why, without running anything of it."""
    srv, models, sentinel = hostile
    org = srv.default
    record = org.upload(chat_lines(12, "hostile-train"))
    swapped = {"swap-out": models / "linked", "swap-remote": models / "remote-code"}
    for name in swapped:
        shutil.copytree(models / "tiny-llama", models / name)
    hp = jobs_pb2.Hyperparameters(n_epochs=1, batch_size=8)
    jobs = {
        (name, seed): org.create_job(record.id, base_model=name, seed=seed, hyperparameters=hp)
        for name, seed in (("pickle-beside", 1), ("pickle-beside", 2), *((n, 1) for n in swapped))
    }
    # Two trainer slots: the first two jobs hold them for seconds while the swaps wait.
    for name, target in swapped.items():
        shutil.rmtree(models / name)
        if target.is_symlink():
            (models / name).symlink_to(target, target_is_directory=True)
        else:
            shutil.copytree(target, models / name)

    done: dict[str, Job] = {}
    for (name, _), job in jobs.items():
        request = jobs_pb2.StreamJobEventsRequest(job_id=job.id)
        messages = [r.event.message for r in org.jobs.StreamJobEvents(request, timeout=300)]
        assert not [m for m in messages if "internal error" in m], messages
        done[name] = org.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id))
    assert not sentinel.exists(), "a hostile model's code ran"

    assert done["pickle-beside"].state == Job.STATE_SUCCEEDED, done["pickle-beside"].error
    for name, why in (("swap-out", "outside the models dir"), ("swap-remote", "remote code")):
        job = done[name]
        assert job.state == Job.STATE_FAILED
        assert job.error.code == "invalid_base_model", job.error
        assert why in job.error.message, job.error
        assert job.progress.attempt == 1
