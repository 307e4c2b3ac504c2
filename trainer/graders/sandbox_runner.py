"""Runs one python grader inside the sandbox; started by `trainer.graders.sandbox` as
`python -I -B sandbox_runner.py` in a fresh scratch directory, never imported.

Before the grader's code runs, this process (still single-threaded):
1. leaves the network: a new user and network namespace (`unshare`), where only a
   loopback that is down exists, when the kernel allows it (reported back either way);
2. limits itself: address space (RLIMIT_AS), CPU seconds (RLIMIT_CPU), the size of any
   file it writes (RLIMIT_FSIZE), open files (RLIMIT_NOFILE), no core dumps;
3. installs an audit hook (PEP 578) that refuses sockets, starting processes, ctypes,
   writing, creating, renaming or deleting anything outside the scratch directory, and
   reading anything outside the scratch directory and Python's own installation.

The request (source, sample, item, limits) arrives as JSON on stdin; the result, one JSON
object, goes to stdout, which the parent has pointed at a file in the scratch directory
(so RLIMIT_FSIZE bounds it). What the grader prints is kept, bounded, as its log.
"""

import ctypes
import io
import json
import os
import resource
import sys
import traceback

CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
MAX_LOG = 4096


def leave_network():
    uid, gid = os.getuid(), os.getgid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
        return f"unshare failed (errno {ctypes.get_errno()}); sockets are refused by the hook only"
    for name, text in (
        ("setgroups", "deny"),
        ("uid_map", f"{uid} {uid} 1"),
        ("gid_map", f"{gid} {gid} 1"),
    ):
        with open(f"/proc/self/{name}", "w") as handle:
            handle.write(text)
    return "network namespace"


def limit(limits):
    memory = limits["memory_bytes"]
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    cpu = limits["cpu_seconds"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    size = limits["file_bytes"]
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class Refused(PermissionError):
    pass


def install_hook(scratch):
    scratch = os.path.realpath(scratch)
    readable = {scratch, "/dev/null", "/dev/urandom", "/usr/share/zoneinfo", "/etc/localtime"}
    for entry in (sys.prefix, sys.base_prefix, sys.exec_prefix, *sys.path):
        if entry:
            readable.add(os.path.realpath(entry))
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    realpath, fspath, isinstance_, str_, bytes_ = (
        os.path.realpath,
        os.fspath,
        isinstance,
        str,
        bytes,
    )

    def inside(path, roots):
        if isinstance_(path, int):
            return True  # an already open descriptor: stdin/stdout, or one opened here
        path = fspath(path)
        if isinstance_(path, bytes_):
            path = path.decode("utf-8", "surrogateescape")
        resolved = realpath(path)
        return any(
            resolved == root or resolved.startswith(root.rstrip("/") + "/") for root in roots
        )

    blocked_prefixes = (
        "socket.",
        "subprocess.",
        "os.exec",
        "os.spawn",
        "os.posix_spawn",
        "os.fork",
        "os.system",
        "os.kill",
        "os.killpg",
        "ctypes.",
        "pty.",
        "winreg.",
        "os.setuid",
        "os.chroot",
        "resource.setrlimit",
        "resource.prlimit",
        "sys.addaudithook",
        "os.add_dll_directory",
    )
    changes = (
        "os.remove",
        "os.rename",
        "os.rmdir",
        "os.mkdir",
        "os.chmod",
        "os.chown",
        "os.truncate",
        "os.symlink",
        "os.link",
        "os.utime",
        "os.replace",
        "shutil.rmtree",
        "shutil.move",
        "shutil.copyfile",
        "shutil.chown",
    )
    blocked_modules = {"ctypes", "_ctypes", "cffi", "_posixsubprocess", "multiprocessing"}

    def hook(event, args):
        if event.startswith(blocked_prefixes):
            if event.startswith("socket."):
                raise Refused("network access is not allowed in the python grader sandbox")
            raise Refused(f"{event} is not allowed in the python grader sandbox")
        if event == "import" and args and str_(args[0]).split(".")[0] in blocked_modules:
            raise Refused(f"importing {args[0]} is not allowed in the python grader sandbox")
        if event == "open":
            path, mode, flags = (list(args) + [None, None, None])[:3]
            writing = (isinstance_(mode, str_) and any(c in mode for c in "wax+")) or (
                isinstance_(flags, int) and flags & write_flags
            )
            if writing and not inside(path, (scratch,)):
                raise Refused(f"writing {path!r} is not allowed: only the scratch directory")
            if not writing and not inside(path, readable):
                raise Refused(f"reading {path!r} is not allowed: only the scratch directory")
        elif event in changes:
            for path in args[:2]:
                if isinstance_(path, str_ | bytes_) and not inside(path, (scratch,)):
                    raise Refused(f"{event} on {path!r} is not allowed: only the scratch directory")

    sys.addaudithook(hook)


class BoundedLog(io.TextIOBase):
    def __init__(self):
        self.parts, self.size = [], 0

    def writable(self):
        return True

    def write(self, text):
        if self.size < MAX_LOG:
            self.parts.append(text[: MAX_LOG - self.size])
            self.size += len(text)
        return len(text)

    def text(self):
        return "".join(self.parts)


def main():
    request = json.loads(sys.stdin.read())
    result_out = sys.stdout
    network = leave_network()
    limit(request["limits"])
    log = BoundedLog()
    sys.stdout = sys.stderr = log
    sys.dont_write_bytecode = True
    install_hook(os.getcwd())
    outcome = {"network": network}
    try:
        namespace = {"__name__": "grader"}
        exec(compile(request["source"], "<grader>", "exec"), namespace)
        grade = namespace.get("grade")
        if not callable(grade):
            raise NameError("the source must define grade(sample, item)")
        score = grade(request["sample"], request["item"])
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise TypeError(f"grade returned {type(score).__name__}, not a number")
        outcome["score"] = float(score)
    except OSError as error:
        if error.errno != 27:  # EFBIG: past RLIMIT_FSIZE
            outcome["error"] = {
                "kind": "runtime",
                "type": type(error).__name__,
                "message": f"{type(error).__name__}: {error}",
            }
        else:
            outcome["error"] = {
                "kind": "output_limit",
                "message": "the grader wrote more than its output limit",
            }
    except MemoryError:
        outcome["error"] = {
            "kind": "memory_limit",
            "message": "MemoryError: the grader ran out of its memory limit",
        }
    except BaseException as error:  # the grader's own failure, reported, never raised
        frames = traceback.format_exception(type(error), error, error.__traceback__)
        outcome["error"] = {
            "kind": "runtime",
            "type": type(error).__name__,
            "message": f"{type(error).__name__}: {error}",
            "traceback": "".join(frames)[-2000:],
        }
    outcome["log"] = log.text()
    os.ftruncate(1, 0)  # whatever the grader wrote to the descriptor itself goes
    os.lseek(1, 0, os.SEEK_SET)
    result_out.write(json.dumps(outcome))
    result_out.flush()


if __name__ == "__main__":
    main()
