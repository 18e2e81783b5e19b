"""A loopback Hugging Face Hub for the test suite: the real huggingface_hub and transformers clients talk to it.

Standard library only (http.server + threading). Repository metadata lives in memory; file contents live on disk,
addressed by sha256, under a storage folder. Start it with ``LoopbackHub()`` (a context manager, or start()/stop()),
point the client at ``hub.url`` through ``HF_ENDPOINT`` (set before huggingface_hub is imported; ``hub.client_env()``
builds the whole environment) and upload with ``HF_HUB_DISABLE_XET=1``. Run ``python tests/hub_server.py [--port N]``
to serve by hand; the first line printed is the URL. ``hub.requests`` lists every (method, path) received, and
``loopback_hub`` is a session-scoped pytest fixture to import (once, into conftest.py) wherever a test needs a Hub.

Implemented (the calls of huggingface_hub 2.4 / transformers 5.23, see docs/hub-api.md):
    GET    /api/whoami-v2
    POST   /api/repos/create                    409 with "url" in the body when the repo exists
    DELETE /api/repos/delete
    POST   /api/validate-yaml                   accepts everything
    GET    /api/{t}/{repo}[/revision/{rev}]     ?blobs=true adds sizes, blob ids and LFS info
    GET    /api/{t}/{repo}/tree/{rev}[/{path}]  ?recursive=, paginated with a Link header
    POST   /api/{t}/{repo}/paths-info/{rev}     form-encoded (or JSON) paths
    GET    /api/{t}/{repo}/refs                 ?include_prs=1
    GET    /api/{t}/{repo}/commits/{rev}        paginated with a Link header
    POST   /api/{t}/{repo}/branch/{branch}      DELETE removes it
    POST   /api/{t}/{repo}/tag/{rev}            DELETE /api/{t}/{repo}/tag/{tag} removes it
    POST   /api/{t}/{repo}/preupload/{rev}      LFS when .gitattributes says so, > 10 MiB, or binary
    POST   /api/{t}/{repo}/commit/{rev}         ndjson; ?create_pr=1 opens refs/pr/N
    POST   /{p}{repo}.git/info/lfs/objects/batch
    PUT    /__lfs/upload/{sha256}               Content-Length or chunked
    POST   /__lfs/verify
    HEAD   /{p}{repo}/resolve/{rev}/{path}      GET too, with Range
Revisions are branch names, tags, refs/pr/N or full commit shas. Errors carry ``X-Error-Code`` (RepoNotFound,
RevisionNotFound, EntryNotFound) as the client expects, and file 404s carry ``X-Repo-Commit``.

Not implemented: Xet (``xet-write-token`` answers 404 with a hint, and ``X-Xet-Hash`` is never sent), LFS multipart
and downloads through the LFS batch API, discussions beyond the ``refs/pr/N`` ref that ``create_pr`` opens,
``.gitignore`` handling in preupload (``shouldIgnore`` is always false), ``expand``/``securityStatus`` (full info
is always returned), authentication (any token is accepted and private repos are readable by everyone), repo
settings, moves and Spaces runtime. Set LOOPBACK_HUB_LOG=1 to log every request to stderr.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import codecs
import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import Message
from fnmatch import fnmatchcase
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import pytest


LOG_ENV_VAR = "LOOPBACK_HUB_LOG"
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # bigger files must be LFS on the Hub
IO_CHUNK_SIZE = 1024 * 1024
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
SHA256 = re.compile(r"[0-9a-f]{64}")

# The .gitattributes that the Hub writes in the first commit of every new repository.
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack *.npy *.npz"
        " *.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors saved_model/**/* *.tar.* *.tar"
        " *.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents*"
    ).split()
)


# ------------------------------------------------------------------------------------------------ hashes and times


def git_blob_sha1(data: bytes) -> str:
    """The object id git gives a blob: sha1 of ``blob <size>\\0<content>``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The pointer file git stores in place of an LFS object."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def utc_timestamp() -> str:
    """Now, in the one format huggingface_hub's ``parse_datetime`` reads."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def looks_binary(sample: bytes) -> bool:
    """The Hub's test on a file's first 512 bytes: a NUL byte, or not UTF-8 (a cut multi-byte tail is fine)."""
    if b"\0" in sample:
        return True
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
    except UnicodeDecodeError:
        return True
    return False


def is_lfs_path(path: str, gitattributes: str) -> bool:
    """Whether ``.gitattributes`` routes ``path`` through LFS; the last matching ``filter`` attribute wins."""
    lfs = False
    for line in gitattributes.splitlines():
        pattern, *attributes = line.split() or [""]
        if not attributes or pattern.startswith("#") or not _gitattributes_match(pattern, path):
            continue
        if "filter=lfs" in attributes:
            lfs = True
        elif any(attribute in ("-filter", "!filter") or attribute.startswith("filter=") for attribute in attributes):
            lfs = False
    return lfs


def _gitattributes_match(pattern: str, path: str) -> bool:
    if "/" not in pattern:  # a bare pattern matches the file name in any folder
        return fnmatchcase(path.rsplit("/", 1)[-1], pattern)
    pattern = pattern.lstrip("/")
    return fnmatchcase(path, pattern) or fnmatchcase(path, pattern.replace("/**/", "/"))


# ------------------------------------------------------------------------------------------------ data model


@dataclass(frozen=True)
class StoredFile:
    """One file of a commit: its content is the blob ``sha256`` in the BlobStore."""

    sha256: str
    size: int
    is_lfs: bool
    git_oid: str  # the id in git's tree: of the content, or of the LFS pointer for LFS files, as on the Hub

    @property
    def etag(self) -> str:
        """The sha256 for LFS files, the git blob id otherwise: the client's cache key, and preupload's ``oid``."""
        return self.sha256 if self.is_lfs else self.git_oid

    def lfs_info(self) -> dict:
        return {"size": self.size, "sha256": self.sha256, "pointerSize": len(lfs_pointer(self.sha256, self.size))}


@dataclass(frozen=True)
class Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    date: str
    files: Mapping[str, StoredFile]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str = field(default_factory=utc_timestamp)
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid
    tags: dict[str, str] = field(default_factory=dict)
    pull_requests: dict[str, str] = field(default_factory=dict)  # "refs/pr/N" -> commit oid

    def resolve(self, revision: str) -> Commit:
        """The commit that a branch, tag, ``refs/pr/N`` or full commit sha names."""
        for refs in (self.branches, self.tags, self.pull_requests):
            if revision in refs:
                return self.commits[refs[revision]]
        if revision in self.commits:
            return self.commits[revision]
        raise HubError.revision_not_found(self, revision)

    def writable_refs(self, revision: str) -> dict[str, str]:
        """The ref table holding ``revision``, which must be a branch or a pull-request ref to take a commit."""
        for refs in (self.branches, self.pull_requests):
            if revision in refs:
                return refs
        self.resolve(revision)  # 404 for unknown revisions
        raise HubError(400, f"Invalid rev id: {revision} is not a branch; commits go to branches or refs/pr/N.")

    def history(self, revision: str) -> list[Commit]:
        """Commits reachable from ``revision``, newest first."""
        commit: Commit | None = self.resolve(revision)
        history = []
        while commit is not None:
            history.append(commit)
            commit = self.commits.get(commit.parent) if commit.parent else None
        return history


_commit_counter = itertools.count()


def new_commit(parent: Commit | None, files: Mapping[str, StoredFile], title: str, message: str) -> Commit:
    date = utc_timestamp()
    parent_oid = parent.oid if parent else None
    digest_input = json.dumps([parent_oid, title, message, date, next(_commit_counter), sorted(files)])
    oid = hashlib.sha1(digest_input.encode()).hexdigest()
    return Commit(oid=oid, parent=parent_oid, title=title, message=message, date=date, files=dict(files))


# ------------------------------------------------------------------------------------------------ errors


class HubError(Exception):
    """An HTTP error as the Hub sends it: status, message, and ``X-Error-Code`` for the client's exception map."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}

    @classmethod
    def repo_not_found(cls, repo_type: str, repo_id: str) -> HubError:
        return cls(404, f"Repository not found: {repo_type} {repo_id}", "RepoNotFound")

    @classmethod
    def revision_not_found(cls, repo: Repo, revision: str) -> HubError:
        return cls(404, f"Invalid rev id: {revision} (repo {repo.repo_id})", "RevisionNotFound")

    @classmethod
    def entry_not_found(cls, message: str, commit: Commit | None = None) -> HubError:
        headers = {"X-Repo-Commit": commit.oid} if commit else {}
        return cls(404, message, "EntryNotFound", headers)


# ------------------------------------------------------------------------------------------------ blob storage


class BlobStore:
    """File contents on disk, named by their sha256; written once through a temporary file, never changed."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.folder / sha256

    def size(self, sha256: str) -> int | None:
        path = self.path(sha256)
        return path.stat().st_size if path.is_file() else None

    def put_bytes(self, data: bytes) -> StoredFile:
        """Store the content of a regular (non-LFS) file."""
        sha256 = hashlib.sha256(data).hexdigest()
        if self.size(sha256) is None:
            self.put_stream([data], sha256)
        return StoredFile(sha256=sha256, size=len(data), is_lfs=False, git_oid=git_blob_sha1(data))

    def put_stream(self, chunks: Iterable[bytes], sha256: str) -> None:
        """Store an upload; 400 if its content does not hash to the sha256 it was announced under."""
        hasher = hashlib.sha256()
        descriptor, temporary = tempfile.mkstemp(dir=self.folder, prefix=".upload-")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                for chunk in chunks:
                    hasher.update(chunk)
                    handle.write(chunk)
            if hasher.hexdigest() != sha256:
                raise HubError(400, f"Uploaded content has sha256 {hasher.hexdigest()}, expected {sha256}.")
            os.replace(temporary, self.path(sha256))
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)

    def lfs_file(self, sha256: str) -> StoredFile:
        """The commit entry for an uploaded LFS object; 422 if it was never uploaded."""
        size = self.size(sha256) if SHA256.fullmatch(sha256) else None
        if size is None:
            raise HubError(422, f"LFS object {sha256} was never uploaded: upload it through the LFS batch API first.")
        return StoredFile(sha256=sha256, size=size, is_lfs=True, git_oid=git_blob_sha1(lfs_pointer(sha256, size)))


# ------------------------------------------------------------------------------------------------ hub state


class HubState:
    """Every repository, under one lock; the HTTP handlers below read and change it."""

    def __init__(self, storage_dir: Path, base_url: str, user: str, page_size: int):
        self.lock = threading.RLock()
        self.blobs = BlobStore(storage_dir / "blobs")
        self.base_url = base_url
        self.user = user
        self.page_size = page_size
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[RecordedRequest] = []

    def get_repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError.repo_not_found(repo_type, repo_id)
        return repo

    def repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.base_url}/{URL_PREFIXES[repo_type]}{repo_id}"

    def create_repo(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private)
        attributes = self.blobs.put_bytes(DEFAULT_GITATTRIBUTES.encode())
        first = new_commit(None, {".gitattributes": attributes}, "initial commit", "")
        repo.commits[first.oid] = first
        repo.branches["main"] = first.oid
        self.repos[(repo_type, repo_id)] = repo
        return repo

    def gitattributes_text(self, commit: Commit) -> str:
        attributes = commit.files.get(".gitattributes")
        return self.blobs.path(attributes.sha256).read_text(errors="replace") if attributes else ""

    def commit(self, repo: Repo, head: Commit, header: dict, operations: list[dict]) -> Commit:
        """Apply ndjson operations on top of ``head``; the caller moves the ref once this succeeds."""
        parent_oid = header.get("parentCommit")
        if parent_oid and parent_oid != head.oid:
            raise HubError(412, f"A commit has happened since {parent_oid}: the head is {head.oid}. Refresh and retry.")
        files = dict(head.files)
        for operation in operations:
            self._apply(files, operation, head)
        commit = new_commit(head, files, header.get("summary") or "", header.get("description") or "")
        repo.commits[commit.oid] = commit
        return commit

    def _apply(self, files: dict[str, StoredFile], operation: dict, head: Commit) -> None:
        key, value = operation.get("key"), operation.get("value") or {}
        path = str(value.get("path", "")).strip("/")
        if not path:
            raise HubError(400, f"Commit operation {key!r} has no path")
        if key == "file":
            files[path] = self.blobs.put_bytes(decode_file_content(value))
        elif key == "lfsFile":
            stored = self.blobs.lfs_file(str(value.get("oid")))
            if value.get("size") not in (None, stored.size):
                raise HubError(422, f"LFS object {stored.sha256} has size {stored.size}, not {value['size']}.")
            files[path] = stored
        elif key == "deletedFile":
            if files.pop(path, None) is None:
                raise HubError.entry_not_found(f"A file with this name doesn't exist: {path}", head)
        elif key == "deletedFolder":
            inside = [name for name in files if name.startswith(path + "/")]
            if not inside:
                raise HubError.entry_not_found(f"A folder with this name doesn't exist: {path}", head)
            for name in inside:
                del files[name]
        else:
            raise HubError(400, f"Unknown commit operation {key!r}")


def decode_file_content(value: dict) -> bytes:
    content = value.get("content", "")
    if value.get("encoding") != "base64":
        return content.encode()
    try:
        return base64.b64decode(content, validate=True)
    except binascii.Error as error:
        raise HubError(400, f"Invalid base64 content for {value.get('path')}: {error}") from error


# ------------------------------------------------------------------------------------------------ JSON shapes


def file_entry(path: str, stored: StoredFile) -> dict:
    entry = {"type": "file", "oid": stored.git_oid, "size": stored.size, "path": path}
    if stored.is_lfs:
        lfs = stored.lfs_info()
        entry["lfs"] = {"oid": lfs["sha256"], "size": lfs["size"], "pointerSize": lfs["pointerSize"]}
    return entry


def folder_entry(path: str, files: Mapping[str, StoredFile]) -> dict:
    inside = sorted((name, stored.git_oid) for name, stored in files.items() if name.startswith(path + "/"))
    return {"type": "directory", "oid": hashlib.sha1(json.dumps(inside).encode()).hexdigest(), "path": path}


def folders_of(files: Mapping[str, StoredFile]) -> set[str]:
    return {name.rsplit("/", depth)[0] for name in files for depth in range(1, name.count("/") + 1)}


def tree_entries(commit: Commit, folder: str, recursive: bool) -> list[dict]:
    """The tree listing of ``folder`` ("" is the root): folders, then files, each sorted by path."""
    prefix = f"{folder}/" if folder else ""
    folders = sorted(name for name in folders_of(commit.files) if name.startswith(prefix))
    if folder and folder not in folders_of(commit.files):
        raise HubError.entry_not_found(f"{folder} does not exist on {commit.oid} or is not a folder", commit)
    files = sorted(name for name in commit.files if name.startswith(prefix))
    if not recursive:
        folders = [name for name in folders if "/" not in name[len(prefix) :]]
        files = [name for name in files if "/" not in name[len(prefix) :]]
    return [folder_entry(name, commit.files) for name in folders] + [
        file_entry(name, commit.files[name]) for name in files
    ]


def repo_info(repo: Repo, commit: Commit, with_blobs: bool) -> dict:
    siblings = []
    for name, stored in sorted(commit.files.items()):
        sibling: dict = {"rfilename": name}
        if with_blobs:
            sibling.update(size=stored.size, blobId=stored.git_oid)
            if stored.is_lfs:
                sibling["lfs"] = stored.lfs_info()
        siblings.append(sibling)
    namespace = repo.repo_id.split("/")[0]
    return {
        "_id": hashlib.sha1(f"{repo.repo_type}/{repo.repo_id}".encode()).hexdigest()[:24],
        "id": repo.repo_id,
        **({"modelId": repo.repo_id} if repo.repo_type == "model" else {}),
        "author": namespace,
        "sha": commit.oid,
        "lastModified": commit.date,
        "createdAt": repo.created_at,
        "private": repo.private,
        "disabled": False,
        "gated": False,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "siblings": siblings,
        "usedStorage": sum(stored.size for stored in commit.files.values()),
    }


def commit_entry(commit: Commit, user: str) -> dict:
    return {
        "id": commit.oid,
        "title": commit.title,
        "message": commit.message,
        "date": commit.date,
        "authors": [{"user": user}],
    }


def ref_entries(refs: Mapping[str, str], kind: str) -> list[dict]:
    return [{"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": oid} for name, oid in sorted(refs.items())]


# ------------------------------------------------------------------------------------------------ HTTP plumbing


class RecordedRequest(NamedTuple):
    method: str
    path: str  # as sent (still URL-quoted), without the query string


@dataclass(frozen=True)
class FileSlice:
    path: Path
    start: int
    length: int


@dataclass
class Response:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | FileSlice = b""

    @property
    def length(self) -> int:
        return self.body.length if isinstance(self.body, FileSlice) else len(self.body)


def json_response(data, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    headers = {"Content-Type": "application/json", **(headers or {})}
    return Response(status, headers, json.dumps(data).encode())


class RequestBody:
    """The request body as a one-pass stream of chunks (Content-Length or chunked); drain() reads what is left."""

    def __init__(self, stream, headers: Message):
        if "chunked" in headers.get("Transfer-Encoding", "").lower():
            self._chunks = self._read_chunked(stream)
        else:
            self._chunks = self._read_sized(stream, int(headers.get("Content-Length") or 0))

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def read(self) -> bytes:
        return b"".join(self._chunks)

    def json(self):
        try:
            return json.loads(self.read() or b"{}")
        except ValueError as error:
            raise HubError(400, f"Request body is not JSON: {error}") from error

    def drain(self) -> None:
        for _ in self._chunks:
            pass

    @staticmethod
    def _read_sized(stream, remaining: int) -> Iterator[bytes]:
        while remaining > 0:
            chunk = stream.read(min(remaining, IO_CHUNK_SIZE))
            if not chunk:
                raise ConnectionError("client closed the connection mid-body")
            remaining -= len(chunk)
            yield chunk

    @classmethod
    def _read_chunked(cls, stream) -> Iterator[bytes]:
        while True:
            size = int(stream.readline(1024).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while stream.readline(1024) not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return
            yield from cls._read_sized(stream, size)
            stream.readline(1024)  # the CRLF closing the chunk


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: RequestBody

    def flag(self, name: str) -> bool:
        return self.query.get(name, [""])[0].lower() in ("1", "true")


def paginated(state: HubState, request: Request, items: list) -> Response:
    """One page of ``items``; a ``Link: <...>; rel="next"`` header points at the next one, as on the Hub."""
    start = int(request.query.get("cursor", ["0"])[0])
    end = start + state.page_size
    headers = {}
    if end < len(items):
        query = urlencode({**{k: v[0] for k, v in request.query.items()}, "cursor": end})
        headers["Link"] = f'<{state.base_url}{request.path}?{query}>; rel="next"'
    return json_response(items[start:end], headers=headers)


def file_response(request: Request, path: Path, size: int, headers: dict[str, str]) -> Response:
    """The whole file, or the one byte range asked for (206), or 416 for a range outside the file."""
    headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream", **headers}
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", request.headers.get("Range", "").strip())
    if not match or match.groups() == ("", ""):
        return Response(200, headers, FileSlice(path, 0, size))
    first, last = match.groups()
    start = int(first) if first else max(size - int(last), 0)
    end = min(int(last), size - 1) if first and last else size - 1
    if start >= size or start > end:
        return Response(416, {**headers, "Content-Range": f"bytes */{size}"})
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return Response(206, headers, FileSlice(path, start, end - start + 1))


# ------------------------------------------------------------------------------------------------ endpoints


def handle_whoami(state: HubState, request: Request) -> Response:
    return json_response(
        {
            "type": "user",
            "id": hashlib.sha1(state.user.encode()).hexdigest()[:24],
            "name": state.user,
            "fullname": state.user,
            "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": "loopback", "role": "write"}},
        }
    )


def repo_from_payload(state: HubState, payload: dict) -> tuple[str, str]:
    """(type, id) from a repos/create or repos/delete body; no organization means the token's user."""
    repo_type = payload.get("type") or "model"
    if repo_type not in URL_PREFIXES or not payload.get("name"):
        raise HubError(400, f"Invalid repo type {repo_type!r} or missing name")
    return repo_type, f"{payload.get('organization') or state.user}/{payload['name']}"


def handle_create_repo(state: HubState, request: Request) -> Response:
    repo_type, repo_id = repo_from_payload(state, payload := request.body.json())
    url = state.repo_url(repo_type, repo_id)
    private = payload.get("visibility") == "private" or bool(payload.get("private"))
    with state.lock:
        if (repo_type, repo_id) in state.repos:
            return json_response({"error": f"You already created this {repo_type} repo", "url": url}, 409)
        state.create_repo(repo_type, repo_id, private)
    return json_response({"url": url, "name": repo_id})


def handle_delete_repo(state: HubState, request: Request) -> Response:
    repo_type, repo_id = repo_from_payload(state, request.body.json())
    with state.lock:
        state.get_repo(repo_type, repo_id)
        del state.repos[(repo_type, repo_id)]
    return Response(200)


def handle_validate_yaml(state: HubState, request: Request) -> Response:
    request.body.json()
    return json_response({"errors": [], "warnings": []})


def handle_repo_info(state: HubState, request: Request, repo_type: str, repo_id: str, rev: str = "main") -> Response:
    with state.lock:
        repo = state.get_repo(repo_type, repo_id)
        return json_response(repo_info(repo, repo.resolve(rev), request.flag("blobs")))


def handle_tree(state: HubState, request: Request, repo_type: str, repo_id: str, rev: str, path: str = "") -> Response:
    with state.lock:
        commit = state.get_repo(repo_type, repo_id).resolve(rev)
        entries = tree_entries(commit, path.strip("/"), request.flag("recursive"))
    return paginated(state, request, entries)


def handle_paths_info(state: HubState, request: Request, repo_type: str, repo_id: str, rev: str) -> Response:
    body = request.body.read()
    if "json" in request.headers.get("Content-Type", ""):
        paths = json.loads(body or b"{}").get("paths", [])
    else:
        paths = parse_qs(body.decode()).get("paths", [])
    with state.lock:
        commit = state.get_repo(repo_type, repo_id).resolve(rev)
        folders = folders_of(commit.files)
        entries = []
        for path in (path.strip("/") for path in paths):
            if path in commit.files:
                entries.append(file_entry(path, commit.files[path]))
            elif path in folders:
                entries.append(folder_entry(path, commit.files))
    return json_response(entries)


def handle_refs(state: HubState, request: Request, repo_type: str, repo_id: str) -> Response:
    with state.lock:
        repo = state.get_repo(repo_type, repo_id)
        refs = {"branches": ref_entries(repo.branches, "heads"), "tags": ref_entries(repo.tags, "tags"), "converts": []}
        if request.flag("include_prs"):
            refs["pullRequests"] = [
                {"name": name, "ref": name, "targetCommit": oid} for name, oid in sorted(repo.pull_requests.items())
            ]
    return json_response(refs)


def handle_commits(state: HubState, request: Request, repo_type: str, repo_id: str, rev: str) -> Response:
    with state.lock:
        history = state.get_repo(repo_type, repo_id).history(rev)
    return paginated(state, request, [commit_entry(commit, state.user) for commit in history])


def handle_create_branch(state: HubState, request: Request, repo_type: str, repo_id: str, branch: str) -> Response:
    starting_point = request.body.json().get("startingPoint") or "main"
    if branch.startswith("refs/") or not branch:
        raise HubError(400, f"Invalid reference for a branch: {branch}")
    with state.lock:
        repo = state.get_repo(repo_type, repo_id)
        if branch in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        repo.branches[branch] = repo.resolve(starting_point).oid
    return json_response({})


def handle_delete_branch(state: HubState, request: Request, repo_type: str, repo_id: str, branch: str) -> Response:
    with state.lock:
        repo = state.get_repo(repo_type, repo_id)
        if branch not in repo.branches:
            raise HubError.revision_not_found(repo, branch)
        if branch == "main":
            raise HubError(403, "Cannot delete the default branch")
        del repo.branches[branch]
    return json_response({})


def handle_create_tag(state: HubState, request: Request, repo_type: str, repo_id: str, rev: str) -> Response:
    tag = request.body.json().get("tag")
    if not tag:
        raise HubError(400, "Missing 'tag' in the request body")
    with state.lock:
        repo = state.get_repo(repo_type, repo_id)
        if tag in repo.tags:
            raise HubError(409, f"Tag {tag} already exists")
        repo.tags[tag] = repo.resolve(rev).oid
    return json_response({})


def handle_delete_tag(state: HubState, request: Request, repo_type: str, repo_id: str, tag: str) -> Response:
    with state.lock:
        repo = state.get_repo(repo_type, repo_id)
        if repo.tags.pop(tag, None) is None:
            raise HubError.revision_not_found(repo, tag)
    return json_response({})


def handle_preupload(state: HubState, request: Request, repo_type: str, repo_id: str, rev: str) -> Response:
    files = request.body.json().get("files", [])
    with state.lock:
        commit = state.get_repo(repo_type, repo_id).resolve(rev)
        gitattributes = state.gitattributes_text(commit)
    answers = []
    for info in files:
        path, size = info["path"], int(info.get("size", 0))
        sample = base64.b64decode(info.get("sample", ""))
        is_lfs = size > LFS_SIZE_THRESHOLD or is_lfs_path(path, gitattributes) or looks_binary(sample)
        remote = commit.files.get(path)
        answers.append(
            {
                "path": path,
                "uploadMode": "lfs" if is_lfs else "regular",
                "shouldIgnore": False,
                "oid": remote.etag if remote else None,
            }
        )
    return json_response({"files": answers, "commitOid": commit.oid})


def handle_commit(state: HubState, request: Request, repo_type: str, repo_id: str, rev: str) -> Response:
    try:
        lines = [json.loads(line) for line in request.body.read().splitlines() if line.strip()]
    except ValueError as error:
        raise HubError(400, f"Commit payload is not ndjson: {error}") from error
    if not lines or lines[0].get("key") != "header":
        raise HubError(400, "The first ndjson line of a commit must be its header")
    header, operations = lines[0].get("value") or {}, lines[1:]
    create_pr = request.flag("create_pr")
    with state.lock:
        repo = state.get_repo(repo_type, repo_id)
        if create_pr:  # a new refs/pr/N, branched from parentCommit or from rev
            refs, ref = repo.pull_requests, f"refs/pr/{len(repo.pull_requests) + 1}"
            head = repo.resolve(header.pop("parentCommit", None) or rev)
        else:
            refs, ref = repo.writable_refs(rev), rev
            head = repo.commits[refs[rev]]
        commit = state.commit(repo, head, header, operations)
        refs[ref] = commit.oid
    repo_url = state.repo_url(repo_type, repo_id)
    return json_response(
        {
            "success": True,
            "commitOid": commit.oid,
            "commitUrl": f"{repo_url}/commit/{commit.oid}",
            "pullRequestUrl": f"{repo_url}/discussions/{ref.rsplit('/', 1)[1]}" if create_pr else None,
        }
    )


def handle_xet_token(state: HubState, request: Request, **_) -> Response:
    raise HubError(404, "This loopback Hub does not implement Xet: set HF_HUB_DISABLE_XET=1 before uploading.")


def handle_lfs_batch(state: HubState, request: Request, repo_type: str, repo_id: str) -> Response:
    payload = request.body.json()
    if payload.get("operation") != "upload":
        raise HubError(422, "Only the 'upload' operation of the LFS batch API is implemented")
    with state.lock:
        state.get_repo(repo_type, repo_id)
    objects = []
    for item in payload.get("objects", []):
        oid, size = str(item.get("oid")), item.get("size")
        if not SHA256.fullmatch(oid):
            objects.append({"oid": oid, "size": size, "error": {"code": 422, "message": "oid must be a sha256"}})
        elif state.blobs.size(oid) == size:  # already stored: no actions, the client skips it
            objects.append({"oid": oid, "size": size})
        else:
            actions = {
                "upload": {"href": f"{state.base_url}/__lfs/upload/{oid}"},
                "verify": {"href": f"{state.base_url}/__lfs/verify"},
            }
            objects.append({"oid": oid, "size": size, "actions": actions})
    lfs_json = {"Content-Type": "application/vnd.git-lfs+json"}
    return json_response({"transfer": "basic", "objects": objects}, headers=lfs_json)


def handle_lfs_upload(state: HubState, request: Request, oid: str) -> Response:
    state.blobs.put_stream(request.body, oid)
    return Response(200)


def handle_lfs_verify(state: HubState, request: Request) -> Response:
    payload = request.body.json()
    oid, size = str(payload.get("oid")), payload.get("size")
    stored_size = state.blobs.size(oid) if SHA256.fullmatch(oid) else None
    if stored_size is None or stored_size != size:
        raise HubError(404, f"LFS object {oid} of size {size} is not stored (stored size: {stored_size})")
    return json_response({"success": True})


def handle_resolve(state: HubState, request: Request, repo_type: str, repo_id: str, rev: str, path: str) -> Response:
    with state.lock:
        commit = state.get_repo(repo_type, repo_id).resolve(rev)
    stored = commit.files.get(path)
    if stored is None:
        raise HubError.entry_not_found(f"Entry not found: {path} at {commit.oid}", commit)
    headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{stored.etag}"'}
    if stored.is_lfs:
        headers.update({"X-Linked-Etag": f'"{stored.sha256}"', "X-Linked-Size": str(stored.size)})
    return file_response(request, state.blobs.path(stored.sha256), stored.size, headers)


_API = r"/api/(?P<repo_type>models|datasets|spaces)/(?P<repo_id>[^/]+/[^/]+)"
_GIT = r"/(?:(?P<repo_type>datasets|spaces)/)?(?P<repo_id>[^/]+/[^/]+)"
_REV = r"(?P<rev>[^/]+)"
ROUTES: list[tuple[tuple[str, ...], re.Pattern, Callable[..., Response]]] = [
    (methods, re.compile(pattern), handler)
    for methods, pattern, handler in [
        (("GET",), r"/api/whoami-v2", handle_whoami),
        (("POST",), r"/api/repos/create", handle_create_repo),
        (("DELETE",), r"/api/repos/delete", handle_delete_repo),
        (("POST",), r"/api/validate-yaml", handle_validate_yaml),
        (("GET",), _API, handle_repo_info),
        (("GET",), _API + rf"/revision/{_REV}", handle_repo_info),
        (("GET",), _API + rf"/tree/{_REV}(?:/(?P<path>.*))?", handle_tree),
        (("POST",), _API + rf"/paths-info/{_REV}", handle_paths_info),
        (("GET",), _API + r"/refs", handle_refs),
        (("GET",), _API + rf"/commits/{_REV}", handle_commits),
        (("POST",), _API + r"/branch/(?P<branch>[^/]+)", handle_create_branch),
        (("DELETE",), _API + r"/branch/(?P<branch>[^/]+)", handle_delete_branch),
        (("POST",), _API + rf"/tag/{_REV}", handle_create_tag),
        (("DELETE",), _API + r"/tag/(?P<tag>[^/]+)", handle_delete_tag),
        (("POST",), _API + rf"/preupload/{_REV}", handle_preupload),
        (("POST",), _API + rf"/commit/{_REV}", handle_commit),
        (("GET",), _API + rf"/xet-write-token/{_REV}", handle_xet_token),
        (("POST",), _GIT + r"\.git/info/lfs/objects/batch", handle_lfs_batch),
        (("PUT",), r"/__lfs/upload/(?P<oid>[0-9a-f]{64})", handle_lfs_upload),
        (("POST",), r"/__lfs/verify", handle_lfs_verify),
        (("GET", "HEAD"), _GIT + rf"/resolve/{_REV}/(?P<path>.+)", handle_resolve),
    ]
]


def dispatch(state: HubState, request: Request) -> Response:
    allowed = []
    for methods, pattern, handler in ROUTES:
        match = pattern.fullmatch(request.path)
        if match is None:
            continue
        if request.method not in methods:
            allowed.extend(methods)
            continue
        arguments = {name: unquote(value) for name, value in match.groupdict().items() if value is not None}
        if "repo_type" in pattern.groupindex:  # "models" in /api paths, no prefix at all in git and file URLs
            arguments["repo_type"] = REPO_TYPES[arguments.get("repo_type", "models")]
        return handler(state, request, **arguments)
    if allowed:
        raise HubError(405, f"{request.method} is not allowed on {request.path}", headers={"Allow": ", ".join(allowed)})
    raise HubError(404, f"No such endpoint on the loopback Hub: {request.method} {request.path}")


def error_response(error: HubError) -> Response:
    headers = {**error.headers, "X-Error-Message": error.message.encode("ascii", "replace").decode()}
    if error.code:
        headers["X-Error-Code"] = error.code
    return json_response({"error": error.message}, error.status, headers)


class _HubRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client expects
    server: _HubHTTPServer

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    def _handle(self) -> None:
        state = self.server.state
        target = urlsplit(self.path)
        with state.lock:
            state.requests.append(RecordedRequest(self.command, target.path))
        body = RequestBody(self.rfile, self.headers)
        request = Request(self.command, target.path, parse_qs(target.query), self.headers, body)
        try:
            response = dispatch(state, request)
            body.drain()  # an unread body would be parsed as the next request on this connection
        except HubError as error:
            response = error_response(error)
            body.drain()
        except ConnectionError:
            self.close_connection = True
            return
        except Exception as error:  # a bug, or a malformed body: show it, answer 500, drop the connection
            traceback.print_exc()
            response = error_response(HubError(500, f"Loopback Hub error: {error!r}"))
            self.close_connection = True
        self._send(response)

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(response.length))
        self.end_headers()
        if self.command == "HEAD":
            return
        if isinstance(response.body, FileSlice):
            self._send_file(response.body)
        else:
            self.wfile.write(response.body)

    def _send_file(self, part: FileSlice) -> None:
        with open(part.path, "rb") as handle:
            handle.seek(part.start)
            remaining = part.length
            while remaining > 0:
                chunk = handle.read(min(remaining, IO_CHUNK_SIZE))
                self.wfile.write(chunk)
                remaining -= len(chunk)

    def log_message(self, format: str, *args) -> None:
        if os.environ.get(LOG_ENV_VAR):
            super().log_message(format, *args)


class _HubHTTPServer(ThreadingHTTPServer):
    """Tracks open connections so that stop() can close keep-alive ones instead of waiting for the client."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int]):
        super().__init__(address, _HubRequestHandler)
        self.state: HubState
        self.open_connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request, client_address) -> None:
        with self._connections_lock:
            self.open_connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self._connections_lock:
            self.open_connections.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        with self._connections_lock:
            connections = list(self.open_connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request, client_address) -> None:
        if os.environ.get(LOG_ENV_VAR) or not isinstance(sys.exc_info()[1], OSError):  # disconnects are normal
            super().handle_error(request, client_address)


# ------------------------------------------------------------------------------------------------ public API


class LoopbackHub:
    """A Hub server on 127.0.0.1 for tests: ``with LoopbackHub() as hub: ... hub.url ...``.

    ``storage_dir`` holds the blobs; when not given, a temporary folder is made and removed by stop().
    ``requests`` lists every request received (method, path), for checks such as "no LFS upload happened".
    """

    def __init__(
        self,
        storage_dir: str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        user: str = "testuser",
        page_size: int = 1000,
    ):
        self._owns_storage = storage_dir is None
        self.storage_dir = Path(storage_dir or tempfile.mkdtemp(prefix="loopback-hub-"))
        self.host, self.port, self.user, self._page_size = host, port, user, page_size
        self.url = ""
        self._server: _HubHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> LoopbackHub:
        if self._server is not None:
            raise RuntimeError("LoopbackHub is already running")
        self._server = _HubHTTPServer((self.host, self.port))
        self.url = f"http://{self.host}:{self._server.server_port}"
        self._server.state = HubState(self.storage_dir, self.url, self.user, self._page_size)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="loopback-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close client connections, wait for the handler threads, remove a temporary storage."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.close_open_connections()
        self._server.server_close()
        self._thread.join()
        self._server = self._thread = None
        if self._owns_storage:
            shutil.rmtree(self.storage_dir, ignore_errors=True)

    def __enter__(self) -> LoopbackHub:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def state(self) -> HubState:
        if self._server is None:
            raise RuntimeError("LoopbackHub is not running")
        return self._server.state

    @property
    def page_size(self) -> int:
        """Entries per page of tree and commit listings; settable while running."""
        return self.state.page_size

    @page_size.setter
    def page_size(self, value: int) -> None:
        self.state.page_size = value

    @property
    def requests(self) -> list[RecordedRequest]:
        with self.state.lock:
            return list(self.state.requests)

    def clear_requests(self) -> None:
        with self.state.lock:
            self.state.requests.clear()

    def client_env(self, hf_home: str | Path, *, offline: bool = False) -> dict[str, str]:
        """Environment for a client subprocess: this Hub, no Xet, a dummy token, its own cache, no other HF_*."""
        env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGINGFACE_"))}
        env.pop("TRANSFORMERS_CACHE", None)
        env.update(
            HF_ENDPOINT=self.url,
            HF_HUB_DISABLE_XET="1",
            HF_TOKEN="hf_loopback_token",
            HF_HOME=str(hf_home),
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
        )
        env["NO_PROXY"] = env["no_proxy"] = ",".join(filter(None, [env.get("NO_PROXY"), self.host]))
        if offline:
            env["HF_HUB_OFFLINE"] = "1"
        return env


@pytest.fixture(scope="session")
def loopback_hub(tmp_path_factory) -> Iterator[LoopbackHub]:
    """One running LoopbackHub per test session; import it into a test module to use it."""
    with LoopbackHub(tmp_path_factory.mktemp("loopback-hub")) as hub:
        yield hub


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a loopback Hugging Face Hub on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0, help="port to bind (default: a free one)")
    parser.add_argument("--storage", help="folder for the blobs (default: a temporary one, removed on exit)")
    arguments = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)  # so that `kill` also removes a temporary storage
    with LoopbackHub(arguments.storage, port=arguments.port) as hub:
        print(hub.url, flush=True)
        print(f"storage: {hub.storage_dir} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


def _stop_on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
