"""A loopback Hugging Face Hub for the tests: the real huggingface_hub and transformers clients talk to it.

It serves what the project's own Hub code calls, and nothing else (measured with huggingface_hub 2.4 and
transformers 5.24 by logging every request of tests/test_hub.py):

- `vaswani-push` / `push_folder` (`HfApi.create_repo`, `create_branch`, `upload_folder`):
      POST /api/repos/create                       409, with the "url" the client reads, when the repo exists
      POST /api/models/{repo}/branch/{branch}      409 when the branch exists
      POST /api/validate-yaml                      before each commit that adds README.md; accepts everything
      POST /api/models/{repo}/preupload/{rev}      LFS for the Hub's .gitattributes patterns and binary files
      POST /{repo}.git/info/lfs/objects/batch      basic transfer only
      PUT  /__lfs/upload/{sha256}                  POST /__lfs/verify
      POST /api/models/{repo}/commit/{rev}         files and LFS files, to a branch
- `from_pretrained` (config, remote code, weights, tokenizer, hence the pipelines too), `hf_hub_download` and
  `snapshot_download`:
      GET  /api/models/{repo}[/revision/{rev}]     the commit a revision names, and its files
      GET  /api/models/{repo}/tree/{rev}[/{path}]  ?recursive=; a missing folder is EntryNotFound, as transformers
                                                   expects when it looks for chat templates
      HEAD /{repo}/resolve/{rev}/{path}            and GET: the file, with the headers the client's cache needs
- the tests' own checks: `list_repo_files`, `list_repo_tree` and `model_info` (above), and `list_repo_commits`:
      GET  /api/models/{repo}/commits/{rev}

Revisions are branch names or full commit shas. Errors carry the `X-Error-Code` that the client turns into its
exceptions (RepoNotFound, RevisionNotFound, EntryNotFound). Everything lives in memory, which suits test files.
Anything else (other repo types, tags, pull requests, deletions, Xet, LFS multipart, ranged downloads, pagination,
authentication) answers 404 or 400: a client upgrade that needs more fails loudly. Uploads need Xet off
(`HF_HUB_DISABLE_XET=1`, or `huggingface_hub.constants.HF_HUB_DISABLE_XET = True` in-process).

    with LoopbackHub() as hub:  # hub.url; hub.requests lists (method, path) of every request received
        HfApi(endpoint=hub.url, token="hf_anything").create_repo("testuser/tiny")

Client processes take the Hub from the environment that `hub.client_env(hf_home)` builds. LOOPBACK_HUB_LOG=1 logs
each request to stderr.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import itertools
import json
import os
import re
import threading
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit


USER = "testuser"
# The patterns that the Hub's default .gitattributes (the first commit of every repository) sends through LFS.
LFS_PATTERNS = (
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack *.npy *.npz *.onnx"
    " *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors *.tar.* *.tar *.tflite *.tgz *.wasm *.xz *.zip"
    " *.zst *tfevents*"
).split()
GITATTRIBUTES = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS).encode()


def now() -> str:
    """The time, in the one format huggingface_hub's `parse_datetime` reads."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def git_blob_sha1(data: bytes) -> str:
    """The id git gives a blob: what the Hub reports for regular files, and the client compares before uploading."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str, sample: bytes) -> bool:
    """The Hub's rule: LFS if .gitattributes says so, or if the first bytes are binary (a NUL, or not UTF-8)."""
    if any(fnmatchcase(path.rsplit("/", 1)[-1], pattern) for pattern in LFS_PATTERNS) or b"\0" in sample:
        return True
    try:  # not final: a multi-byte character cut by the end of the sample is still text
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
    except UnicodeDecodeError:
        return True
    return False


class StoredFile:
    """A file of a commit, with the ids the client compares: git's id of what the tree holds (the content, or the
    LFS pointer), and the ETag (the sha256 of an LFS file, the git id of others), its cache key."""

    def __init__(self, content: bytes, lfs: bool):
        self.content, self.lfs, self.size = content, lfs, len(content)
        self.sha256 = hashlib.sha256(content).hexdigest()
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n".encode()
        self.pointer_size = len(pointer)
        self.git_oid = git_blob_sha1(pointer if lfs else content)
        self.etag = self.sha256 if lfs else self.git_oid

    def tree_entry(self, path: str) -> dict:
        entry = {"type": "file", "path": path, "size": self.size, "oid": self.git_oid}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": self.pointer_size}
        return entry


@dataclass(frozen=True)
class Commit:
    oid: str
    parent: Commit | None
    title: str
    files: dict[str, StoredFile]
    date: str = field(default_factory=now)

    def history(self) -> list[Commit]:
        """This commit and its ancestors, newest first."""
        commit, history = self, []
        while commit is not None:
            history.append(commit)
            commit = commit.parent
        return history


@dataclass
class Repo:
    repo_id: str
    private: bool
    created_at: str = field(default_factory=now)
    branches: dict[str, Commit] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)  # every commit by its oid: pinned revisions

    def resolve(self, revision: str) -> Commit:
        commit = self.branches.get(revision) or self.commits.get(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision} (repo {self.repo_id})", "RevisionNotFound")
        return commit


class HubError(Exception):
    """An error as the Hub answers it: the status, the message, and the code that the client maps to its errors."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


def file_not_found(path: str, commit: Commit) -> HubError:
    # X-Repo-Commit lets the client cache the miss, so that an offline load knows the file does not exist.
    return HubError(404, f"Entry not found: {path} at {commit.oid}", "EntryNotFound", {"X-Repo-Commit": commit.oid})


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def json_response(data, status: int = 200, headers: dict | None = None) -> Response:
    return Response(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes

    def json(self):
        try:
            return json.loads(self.body or b"{}")
        except ValueError as error:
            raise HubError(400, f"The request body is not JSON: {error}") from error


class HubState:
    """Every repository, the uploaded LFS objects and the request log, under one lock; the handlers below use it."""

    def __init__(self, url: str):
        self.url = url
        self.lock = threading.RLock()
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> content
        self.requests: list[tuple[str, str]] = []
        self._commit_ids = itertools.count()

    def repo(self, repo_id: str) -> Repo:
        if repo_id not in self.repos:
            raise HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return self.repos[repo_id]

    def new_commit(self, repo: Repo, parent: Commit | None, title: str, files: dict[str, StoredFile]) -> Commit:
        oid = hashlib.sha1(f"{repo.repo_id} {next(self._commit_ids)}".encode()).hexdigest()
        commit = Commit(oid, parent, title, files)
        repo.commits[oid] = commit
        return commit

    def commit(self, repo: Repo, branch: str, title: str, operations: list[dict]) -> Commit:
        """Apply the commit's ndjson operations on top of `branch` and move the branch to the new commit."""
        head = repo.resolve(branch)
        files = dict(head.files)
        for operation in operations:
            key, value = operation.get("key"), operation.get("value") or {}
            if key == "file":
                files[value["path"]] = StoredFile(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile" and value.get("oid") in self.lfs_objects:
                files[value["path"]] = StoredFile(self.lfs_objects[value["oid"]], lfs=True)
            else:
                raise HubError(400, f"Unsupported commit operation (or LFS object never uploaded): {operation}")
        repo.branches[branch] = self.new_commit(repo, head, title, files)
        return repo.branches[branch]


# ------------------------------------------------------------------------------------------------ endpoints


def handle_create_repo(state: HubState, request: Request) -> Response:
    payload = request.json()
    if payload.get("type", "model") != "model":
        raise HubError(400, "This loopback Hub only holds model repositories.")
    repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
    url = f"{state.url}/{repo_id}"
    with state.lock:
        if repo_id in state.repos:
            return json_response({"error": "You already created this model repo", "url": url}, 409)
        private = bool(payload.get("private")) or payload.get("visibility") == "private"
        repo = state.repos[repo_id] = Repo(repo_id, private)
        gitattributes = {".gitattributes": StoredFile(GITATTRIBUTES, lfs=False)}
        repo.branches["main"] = state.new_commit(repo, None, "initial commit", gitattributes)
    return json_response({"url": url, "name": repo_id})


def handle_create_branch(state: HubState, request: Request, repo_id: str, branch: str) -> Response:
    starting_point = request.json().get("startingPoint") or "main"
    with state.lock:
        repo = state.repo(repo_id)
        if branch in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        repo.branches[branch] = repo.resolve(starting_point)
    return json_response({})


def handle_validate_yaml(state: HubState, request: Request) -> Response:
    return json_response({"errors": [], "warnings": []})


def handle_repo_info(state: HubState, request: Request, repo_id: str, rev: str = "main") -> Response:
    with state.lock:
        repo = state.repo(repo_id)
        commit = repo.resolve(rev)
    siblings = []
    for path, stored in sorted(commit.files.items()):
        siblings.append({"rfilename": path, "size": stored.size, "blobId": stored.git_oid})
        if stored.lfs:
            siblings[-1]["lfs"] = {"size": stored.size, "sha256": stored.sha256, "pointerSize": stored.pointer_size}
    info = {"id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0], "sha": commit.oid, "tags": []}
    info |= {"private": repo.private, "lastModified": commit.date, "createdAt": repo.created_at, "siblings": siblings}
    return json_response(info)


def handle_tree(state: HubState, request: Request, repo_id: str, rev: str, path: str = "") -> Response:
    with state.lock:
        commit = state.repo(repo_id).resolve(rev)
    prefix = f"{path.strip('/')}/".lstrip("/")
    inside = sorted(name for name in commit.files if name.startswith(prefix))
    if prefix and not inside:
        raise file_not_found(path, commit)
    recursive = request.query.get("recursive", ["false"])[0].lower() == "true"
    folders, files = set(), []
    for name in inside:
        parts = name[len(prefix) :].split("/")
        # Every folder on the way down when recursive, else only the first one, and files at this level only.
        deepest = len(parts) - 1 if recursive else min(len(parts) - 1, 1)
        folders.update(prefix + "/".join(parts[:depth]) for depth in range(1, deepest + 1))
        if recursive or len(parts) == 1:
            files.append(commit.files[name].tree_entry(name))
    return json_response([folder_entry(commit, folder) for folder in sorted(folders)] + files)


def folder_entry(commit: Commit, folder: str) -> dict:
    inside = sorted((name, stored.git_oid) for name, stored in commit.files.items() if name.startswith(f"{folder}/"))
    return {"type": "directory", "path": folder, "oid": hashlib.sha1(json.dumps(inside).encode()).hexdigest()}


def handle_commits(state: HubState, request: Request, repo_id: str, rev: str) -> Response:
    with state.lock:
        history = state.repo(repo_id).resolve(rev).history()
    entries = [{"id": commit.oid, "title": commit.title, "message": "", "date": commit.date, "authors": []}
               for commit in history]  # fmt: skip
    return json_response(entries)


def handle_preupload(state: HubState, request: Request, repo_id: str, rev: str) -> Response:
    with state.lock:
        head = state.repo(repo_id).resolve(rev)
    answers = []
    for file in request.json().get("files", []):
        remote = head.files.get(file["path"])
        upload_mode = "lfs" if is_lfs(file["path"], base64.b64decode(file.get("sample", ""))) else "regular"
        # With the remote oid the client skips the files that the branch already holds unchanged.
        answers.append({"path": file["path"], "uploadMode": upload_mode, "shouldIgnore": False,
                        "oid": remote.etag if remote else None})  # fmt: skip
    return json_response({"files": answers, "commitOid": head.oid})


def handle_commit(state: HubState, request: Request, repo_id: str, rev: str) -> Response:
    lines = [json.loads(line) for line in request.body.splitlines() if line.strip()]
    if not lines or lines[0].get("key") != "header":
        raise HubError(400, "The first ndjson line of a commit must be its header.")
    with state.lock:
        repo = state.repo(repo_id)
        if rev not in repo.branches:
            raise HubError(400, f"Invalid rev id: {rev} is not a branch; commits go to branches.")
        new = state.commit(repo, rev, lines[0]["value"].get("summary") or "", lines[1:])
    url = f"{state.url}/{repo_id}/commit/{new.oid}"
    return json_response({"success": True, "commitOid": new.oid, "commitUrl": url})


def handle_lfs_batch(state: HubState, request: Request, repo_id: str) -> Response:
    payload = request.json()
    if payload.get("operation") != "upload":
        raise HubError(400, "Only uploads go through this Hub's LFS batch API; downloads use /resolve.")
    with state.lock:
        state.repo(repo_id)
        stored = set(state.lfs_objects)
    objects = []
    for item in payload.get("objects", []):
        actions = {"upload": {"href": f"{state.url}/__lfs/upload/{item['oid']}"},
                   "verify": {"href": f"{state.url}/__lfs/verify"}}  # fmt: skip
        objects.append({**item, **({} if item["oid"] in stored else {"actions": actions})})  # no actions: skip it
    lfs_json = {"Content-Type": "application/vnd.git-lfs+json"}
    return json_response({"transfer": "basic", "objects": objects}, headers=lfs_json)


def handle_lfs_upload(state: HubState, request: Request, oid: str) -> Response:
    if hashlib.sha256(request.body).hexdigest() != oid:
        raise HubError(400, f"The uploaded content does not hash to {oid}.")
    with state.lock:
        state.lfs_objects[oid] = request.body
    return Response(200)


def handle_lfs_verify(state: HubState, request: Request) -> Response:
    payload = request.json()
    with state.lock:
        content = state.lfs_objects.get(payload.get("oid"))
    if content is None or len(content) != payload.get("size"):
        raise HubError(404, f"LFS object {payload.get('oid')} of size {payload.get('size')} was not uploaded.")
    return json_response({"success": True})


def handle_resolve(state: HubState, request: Request, repo_id: str, rev: str, path: str) -> Response:
    with state.lock:
        commit = state.repo(repo_id).resolve(rev)
    stored = commit.files.get(path)
    if stored is None:
        raise file_not_found(path, commit)
    headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{stored.etag}"', "Content-Type": "application/octet-stream"}
    if stored.lfs:
        headers |= {"X-Linked-Etag": f'"{stored.sha256}"', "X-Linked-Size": str(len(stored.content))}
    return Response(200, stored.content, headers)


_REPO = r"(?P<repo_id>[^/]+/[^/]+)"
_API = rf"/api/models/{_REPO}"
_REV = r"(?P<rev>[^/]+)"
ROUTES = [
    (method, re.compile(pattern), handler)
    for method, pattern, handler in [
        ("POST", r"/api/repos/create", handle_create_repo),
        ("POST", r"/api/validate-yaml", handle_validate_yaml),
        ("GET", _API, handle_repo_info),
        ("GET", rf"{_API}/revision/{_REV}", handle_repo_info),
        ("GET", rf"{_API}/tree/{_REV}(?:/(?P<path>.*))?", handle_tree),
        ("GET", rf"{_API}/commits/{_REV}", handle_commits),
        ("POST", rf"{_API}/branch/(?P<branch>[^/]+)", handle_create_branch),
        ("POST", rf"{_API}/preupload/{_REV}", handle_preupload),
        ("POST", rf"{_API}/commit/{_REV}", handle_commit),
        ("POST", rf"/{_REPO}\.git/info/lfs/objects/batch", handle_lfs_batch),
        ("PUT", r"/__lfs/upload/(?P<oid>[0-9a-f]{64})", handle_lfs_upload),
        ("POST", r"/__lfs/verify", handle_lfs_verify),
        ("GET", rf"/{_REPO}/resolve/{_REV}/(?P<path>.+)", handle_resolve),
        ("HEAD", rf"/{_REPO}/resolve/{_REV}/(?P<path>.+)", handle_resolve),
    ]
]


def dispatch(state: HubState, request: Request) -> Response:
    for method, pattern, handler in ROUTES:
        match = pattern.fullmatch(request.path)
        if match and request.method == method:
            arguments = {name: unquote(value) for name, value in match.groupdict().items() if value is not None}
            return handler(state, request, **arguments)
    raise HubError(404, f"The loopback Hub does not serve {request.method} {request.path}.")


# ------------------------------------------------------------------------------------------------ HTTP


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client expects
    server: _Server

    def do_GET(self) -> None:
        state = self.server.state
        target = urlsplit(self.path)
        with state.lock:
            state.requests.append((self.command, target.path))
        # The whole body is read first, whatever happens next: an unread body would corrupt the next request on
        # this keep-alive connection. Test files are small, and the client always sends a Content-Length.
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            response = dispatch(state, Request(self.command, target.path, parse_qs(target.query), body))
        except HubError as error:
            response = error_response(error)
        except Exception as error:  # a bug here, or a request the handlers did not expect: show it, answer 500
            traceback.print_exc()
            response = error_response(HubError(500, f"Loopback Hub error: {error!r}"))
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def log_message(self, format: str, *args) -> None:
        if os.environ.get("LOOPBACK_HUB_LOG"):
            super().log_message(format, *args)


def error_response(error: HubError) -> Response:
    headers = {**error.headers, "X-Error-Message": error.message.encode("ascii", "replace").decode()}
    if error.code:
        headers["X-Error-Code"] = error.code
    return json_response({"error": error.message}, error.status, headers)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a client's idle keep-alive connection must not keep stop() waiting
    state: HubState


class LoopbackHub:
    """The Hub on 127.0.0.1, on a free port: `with LoopbackHub() as hub: ... hub.url ... hub.requests ...`."""

    def __init__(self):
        self.url = ""
        self._server: _Server | None = None

    def __enter__(self) -> LoopbackHub:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._server.state = HubState(self.url)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def state(self) -> HubState:
        return self._server.state

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of every request received, the path still URL-quoted and without its query."""
        with self.state.lock:
            return list(self.state.requests)

    def clear_requests(self) -> None:
        with self.state.lock:
            self.state.requests.clear()

    def client_env(self, hf_home: str | Path, *, offline: bool = False) -> dict[str, str]:
        """The environment of a client process: this Hub, no Xet, a dummy token, its own cache, no other HF_*."""
        env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGINGFACE_"))}
        env.pop("TRANSFORMERS_CACHE", None)
        env |= {"HF_ENDPOINT": self.url, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": "hf_loopback_token",
                "HF_HOME": str(hf_home), "HF_HUB_DISABLE_TELEMETRY": "1",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1"}  # fmt: skip
        env["NO_PROXY"] = env["no_proxy"] = ",".join(filter(None, [env.get("NO_PROXY"), "127.0.0.1"]))
        if offline:
            env["HF_HUB_OFFLINE"] = "1"
        return env
