"""A fake Hugging Face Hub on 127.0.0.1 that answers as the real one does, for what the
fetcher uses:

- `GET /api/models/ORG/NAME/revision/REV[?blobs=true]`: `sha` (the commit REV points at) and
  `siblings[].rfilename`; with blobs=true also each file's `size`, `blobId` and, for LFS files,
  `lfs: {sha256, size, pointerSize}`.
- `GET /ORG/NAME/resolve/REV/PATH`: a file kept in git answers 200 with its bytes; an LFS
  file answers 302 to the CDN (another origin: the file server given) with `X-Linked-Etag`
  (its sha256, quoted) and `X-Linked-Size`, as the Hub does.
- A gated repository answers the resolve of its files with 401 (`X-Error-Code: GatedRepo`)
  unless the request carries `Authorization: Bearer <its token>`; its listing stays public.
- Errors carry `X-Error-Code` / `X-Error-Message` as the Hub's do.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from file_server import FileServer, ServedFile

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin")


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    commit: str
    branches: dict[str, str]
    gated_token: str | None = None

    def commit_for(self, revision: str) -> str | None:
        if revision == self.commit:
            return revision
        return self.branches.get(revision)


@dataclass
class FakeHub:
    cdn: FileServer
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    url: str = ""

    def add_repo(
        self, repo_id: str, files: dict[str, bytes], *, gated_token: str | None = None
    ) -> str:
        """Publish `files` as the one commit of `repo_id` (branch main); return the commit."""
        commit = hashlib.sha1(repo_id.encode() + b"".join(sorted(files.values()))).hexdigest()
        self.repos[repo_id] = FakeRepo(dict(files), commit, {"main": commit}, gated_token)
        for path, body in files.items():
            if is_lfs(path):
                self.cdn.files[cdn_path(body)] = ServedFile(body, etag=f'"{sha256(body)}"')
        return commit

    def cdn_file(self, repo_id: str, path: str) -> ServedFile:
        """What the CDN serves for an LFS file: set its faults here."""
        return self.cdn.files[cdn_path(self.repos[repo_id].files[path])]

    def resolve_requests(self) -> list[str]:
        return [path for path, _ in self.requests if "/resolve/" in path]


def is_lfs(path: str) -> bool:
    return path.endswith(LFS_SUFFIXES)


def sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def cdn_path(body: bytes) -> str:
    return f"/xet-bridge/{sha256(body)}"


def git_blob_id(body: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()


def _sibling(path: str, body: bytes, blobs: bool) -> dict:
    entry: dict = {"rfilename": path}
    if blobs:
        entry.update(size=len(body), blobId=git_blob_id(body))
        if is_lfs(path):
            entry["lfs"] = {"sha256": sha256(body), "size": len(body), "pointerSize": 134}
    return entry


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            hub.requests.append((self.path, dict(self.headers)))
            url = urlsplit(self.path)
            parts = url.path.split("/")
            if parts[1:3] == ["api", "models"] and len(parts) == 7 and parts[5] == "revision":
                blobs = parse_qs(url.query).get("blobs") == ["true"]
                self._listing(f"{parts[3]}/{parts[4]}", unquote(parts[6]), blobs)
            elif len(parts) >= 6 and parts[3] == "resolve":
                path = unquote("/".join(parts[5:]))
                self._resolve(f"{parts[1]}/{parts[2]}", unquote(parts[4]), path)
            else:
                self._error(404, "EntryNotFound", "no such endpoint")

        def _listing(self, repo_id: str, revision: str, blobs: bool) -> None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(401, "RepoNotFound", "Repository not found")
                return
            commit = repo.commit_for(revision)
            if commit is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                return
            siblings = [_sibling(p, b, blobs) for p, b in sorted(repo.files.items())]
            self._json({"_id": "0" * 24, "id": repo_id, "sha": commit, "siblings": siblings})

        def _resolve(self, repo_id: str, revision: str, path: str) -> None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(401, "RepoNotFound", "Repository not found")
                return
            if repo.gated_token and self.headers.get("Authorization") != (
                f"Bearer {repo.gated_token}"
            ):
                self._error(
                    401,
                    "GatedRepo",
                    f"Access to model {repo_id} is restricted. You must have access to it and "
                    "be authenticated to access it. Please log in.",
                )
                return
            commit = repo.commit_for(revision)
            if commit is None or path not in repo.files:
                self._error(404, "EntryNotFound", f"{path} does not exist on {revision}")
                return
            body = repo.files[path]
            if is_lfs(path):
                self.send_response(302)
                self.send_header("Location", hub.cdn.url + cdn_path(body))
                self.send_header("X-Linked-Etag", f'"{sha256(body)}"')
                self.send_header("X-Linked-Size", str(len(body)))
                self.send_header("X-Repo-Commit", commit)
                self.send_header("ETag", f'"{git_blob_id(body)}"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("ETag", f'"{git_blob_id(body)}"')
            self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, document: dict) -> None:
            body = json.dumps(document).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, code: str, message: str) -> None:
            body = json.dumps({"error": message}).encode()
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@contextmanager
def serving_hub(cdn: FileServer) -> Iterator[FakeHub]:
    hub = FakeHub(cdn)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    httpd.daemon_threads = True
    hub.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        httpd.shutdown()
        httpd.server_close()
