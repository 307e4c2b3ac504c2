"""A Hugging Face hub mirror on 127.0.0.1: enough of the hub's HTTP API for
`huggingface_hub.snapshot_download` (what an `HF_ENDPOINT` mirror serves), over model
repos held in memory.

- `GET /api/models/{repo}/revision/{rev}`: the repo's info, with the commit `sha`;
- `GET /api/models/{repo}/tree/{rev}`: its files (safetensors as LFS files);
- `HEAD|GET /{repo}/resolve/{rev}/{path}`: a file, with `X-Repo-Commit` and `ETag`.

Errors carry the hub's `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound),
which huggingface_hub turns into its exceptions. Every file served by GET is recorded in
`downloaded`, so a test can tell what a client fetched.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_REPO = r"(?P<repo>[^/]+/[^/]+)"
_INFO = re.compile(rf"^/api/models/{_REPO}/revision/(?P<rev>[^/]+)$")
_TREE = re.compile(rf"^/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")
_RESOLVE = re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


@dataclass
class Revision:
    sha: str
    files: dict[str, bytes]


@dataclass
class HubMirror:
    """Repos by id, each with revisions by name (and by their commit sha)."""

    repos: dict[str, dict[str, Revision]] = field(default_factory=dict)
    downloaded: list[tuple[str, str]] = field(default_factory=list)
    """(repo id, path) of every file a GET served."""

    def add_repo(self, repo_id: str, files: dict[str, bytes], revision: str = "main") -> str:
        """Serve `files` as `revision` of `repo_id`; returns the revision's commit sha."""
        digest = hashlib.sha1(repo_id.encode() + revision.encode())
        for name in sorted(files):
            digest.update(name.encode() + hashlib.sha1(files[name]).digest())
        entry = Revision(digest.hexdigest(), files)
        self.repos.setdefault(repo_id, {}).update({revision: entry, entry.sha: entry})
        return entry.sha

    def add_dir(self, repo_id: str, path: Path, revision: str = "main") -> str:
        """Serve every file under `path` (subfolders included) as a revision."""
        files = {
            p.relative_to(path).as_posix(): p.read_bytes()
            for p in sorted(path.rglob("*"))
            if p.is_file()
        }
        return self.add_repo(repo_id, files, revision)

    def start(self) -> str:
        """Serve on a free port of 127.0.0.1 in a daemon thread; returns the endpoint."""
        mirror = self

        class Handler(_Handler):
            hub = mirror

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _oid(data: bytes) -> str:
    """The git blob id, as the hub reports for a file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _is_lfs(path: str) -> bool:
    return path.endswith((".safetensors", ".bin", ".pt"))


class _Handler(BaseHTTPRequestHandler):
    hub: HubMirror
    protocol_version = "HTTP/1.1"

    def log_message(self, *_args: object) -> None:  # quiet under pytest
        return None

    def do_GET(self) -> None:
        self._route(body=True)

    def do_HEAD(self) -> None:
        self._route(body=False)

    def _route(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        if match := _INFO.match(path):
            revision = self._revision(match["repo"], match["rev"])
            if revision is not None:
                self._json(
                    {
                        "_id": revision.sha,
                        "id": match["repo"],
                        "modelId": match["repo"],
                        "sha": revision.sha,
                        "private": False,
                        "siblings": [{"rfilename": name} for name in sorted(revision.files)],
                    },
                    body,
                )
        elif match := _TREE.match(path):
            revision = self._revision(match["repo"], match["rev"])
            if revision is not None:
                self._json([_entry(p, d) for p, d in sorted(revision.files.items())], body)
        elif match := _RESOLVE.match(path):
            revision = self._revision(match["repo"], match["rev"])
            if revision is None:
                return
            data = revision.files.get(match["path"])
            if data is None:
                self._error(404, "EntryNotFound", f"{match['path']} not found")
                return
            etag = hashlib.sha256(data).hexdigest() if _is_lfs(match["path"]) else _oid(data)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Repo-Commit", revision.sha)
            self.send_header("ETag", f'"{etag}"')
            self.end_headers()
            if body:
                self.hub.downloaded.append((match["repo"], match["path"]))
                self.wfile.write(data)
        else:
            self._error(404, "", f"no route {path}")

    def _revision(self, repo_id: str, name: str) -> Revision | None:
        revisions = self.hub.repos.get(repo_id)
        if revisions is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        if name not in revisions:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {name}")
            return None
        return revisions[name]

    def _json(self, value: object, body: bool) -> None:
        data = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _error(self, status: int, code: str, message: str) -> None:
        data = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def _entry(path: str, data: bytes) -> dict[str, object]:
    entry: dict[str, object] = {"type": "file", "oid": _oid(data), "size": len(data), "path": path}
    if _is_lfs(path):
        entry["lfs"] = {
            "oid": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "pointerSize": 134,
        }
    return entry
