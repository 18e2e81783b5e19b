"""The loopback Hub (tests/hub_server.py) driven by the real huggingface_hub and transformers clients.

HF_ENDPOINT is read when huggingface_hub is imported, so client code runs in a subprocess. To pay for that import
once, a worker process (this file run as a script) runs the functions registered with ``@client_call`` on request,
one JSON line per call over stdin/stdout; an exception there is re-raised here as a ClientError that starts with the
client's exception class name. The server runs in the pytest process, so tests can read its request log.
"""

import hashlib
import http.client
import json
import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from hub_server import LoopbackHub, loopback_hub  # noqa: F401  (loopback_hub is a fixture)


# ------------------------------------------------------------------------------------------------ client side

CLIENT_CALLS: dict[str, Callable] = {}


def client_call(function: Callable) -> Callable:
    """Register a function that the worker may run; it must take and return JSON values."""
    CLIENT_CALLS[function.__name__] = function
    return function


@client_call
def upload_folder(repo_id: str, folder: str, revision: str | None = None, private: bool | None = None) -> str:
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    return api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision).oid


@client_call
def upload_bytes(repo_id: str, path: str, content: str, **options) -> dict:
    from huggingface_hub import HfApi

    info = HfApi().upload_file(path_or_fileobj=content.encode(), path_in_repo=path, repo_id=repo_id, **options)
    return {"oid": info.oid, "pr_revision": info.pr_revision}


@client_call
def download(repo_id: str, filename: str, revision: str | None = None) -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id, filename, revision=revision)


@client_call
def snapshot(repo_id: str, revision: str | None = None) -> str:
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id, revision=revision)


@client_call
def list_files(repo_id: str, revision: str | None = None) -> list[str]:
    from huggingface_hub import HfApi

    return HfApi().list_repo_files(repo_id, revision=revision)


@client_call
def list_tree(repo_id: str, path: str | None = None, recursive: bool = False) -> dict[str, str]:
    """{path: "folder" | "lfs" | "regular"} for the tree listing."""
    from huggingface_hub import HfApi, RepoFolder

    entries = HfApi().list_repo_tree(repo_id, path_in_repo=path, recursive=recursive)
    return {
        entry.path: "folder" if isinstance(entry, RepoFolder) else ("lfs" if entry.lfs else "regular")
        for entry in entries
    }


@client_call
def model_info(repo_id: str) -> dict:
    from huggingface_hub import HfApi

    info = HfApi().model_info(repo_id, files_metadata=True)
    return {"private": info.private, "sha": info.sha, "sizes": {s.rfilename: s.size for s in info.siblings}}


@client_call
def create_repo(repo_id: str, private: bool) -> str:
    from huggingface_hub import HfApi

    return HfApi().create_repo(repo_id, private=private).repo_id


@client_call
def create_branch(repo_id: str, branch: str, revision: str | None = None) -> None:
    from huggingface_hub import HfApi

    HfApi().create_branch(repo_id, branch=branch, revision=revision)


@client_call
def create_tag(repo_id: str, tag: str, revision: str) -> None:
    from huggingface_hub import HfApi

    HfApi().create_tag(repo_id, tag=tag, revision=revision)


@client_call
def list_refs(repo_id: str) -> dict:
    from huggingface_hub import HfApi

    refs = HfApi().list_repo_refs(repo_id, include_pull_requests=True)
    return {kind: {ref.name: ref.target_commit for ref in getattr(refs, kind)} for kind in ("branches", "tags")}


@client_call
def list_commits(repo_id: str, revision: str | None = None) -> list[list[str]]:
    from huggingface_hub import HfApi

    return [[commit.commit_id, commit.title] for commit in HfApi().list_repo_commits(repo_id, revision=revision)]


@client_call
def delete_file(repo_id: str, path: str) -> str:
    from huggingface_hub import HfApi

    return HfApi().delete_file(path, repo_id).oid


@client_call
def transformers_round_trip(repo_id: str) -> dict:
    import torch
    from transformers import AutoModel, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=50)
    model = BertModel(config)
    model.push_to_hub(repo_id)
    loaded = AutoModel.from_pretrained(repo_id)
    pushed, pulled = model.state_dict(), loaded.state_dict()
    return {
        "class": type(loaded).__name__,
        "same_keys": sorted(pushed) == sorted(pulled),
        "same_weights": all(torch.equal(pushed[name], pulled[name]) for name in pushed),
    }


def serve_client_calls() -> None:
    """The worker loop: one JSON request per stdin line, one JSON reply per stdout line."""
    replies = sys.stdout
    sys.stdout = sys.stderr  # whatever the client prints must not mix with the replies
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = {"result": CLIENT_CALLS[request["call"]](**request["kwargs"])}
        except Exception as error:
            reply = {"error": type(error).__name__, "message": str(error)}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown (seconds once torch is loaded): every reply is already written


# ------------------------------------------------------------------------------------------------ test side


class ClientError(Exception):
    """An exception raised by the client in the worker, as ``ExceptionClass: message``."""


class ClientWorker:
    """A subprocess with its own environment (see LoopbackHub.client_env) that runs client calls on request."""

    def __init__(self, env: dict[str, str]):
        self._stderr = tempfile.TemporaryFile("w+")
        self._process = subprocess.Popen(
            [sys.executable, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            text=True,
            cwd=env["HF_HOME"],
        )

    def call(self, name: str, timeout: float = 120, **kwargs):
        self._process.stdin.write(json.dumps({"call": name, "kwargs": kwargs}) + "\n")
        self._process.stdin.flush()
        ready, _, _ = select.select([self._process.stdout], [], [], timeout)
        line = self._process.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"client worker gave no answer to {name}:\n{self.stderr_tail()}")
        reply = json.loads(line)
        if "error" in reply:
            raise ClientError(f"{reply['error']}: {reply['message']}")
        return reply["result"]

    def stderr_tail(self, size: int = 4000) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-size:]

    def close(self) -> None:
        self._process.stdin.close()
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process.stdout.close()
        self._stderr.close()

    def __enter__(self) -> "ClientWorker":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


@pytest.fixture(scope="module")
def client(loopback_hub, tmp_path_factory):  # noqa: F811  (the fixture imported above)
    hf_home = tmp_path_factory.mktemp("hf_home")
    with ClientWorker(loopback_hub.client_env(hf_home)) as worker:
        yield worker


@pytest.fixture
def repo_id(request) -> str:
    return "testuser/" + re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)


SAFETENSORS_BYTES = bytes(range(256)) * 16  # binary, and *.safetensors is LFS in .gitattributes


def write_files(folder: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return folder


@pytest.fixture
def model_folder(tmp_path) -> Path:
    return write_files(
        tmp_path / "upload",
        {"config.json": b'{"hidden_size": 16}\n', "model.safetensors": SAFETENSORS_BYTES, "sub/notes.txt": b"notes\n"},
    )


def lfs_uploads(hub: LoopbackHub) -> list[str]:
    return [path for method, path in hub.requests if method == "PUT" and path.startswith("/__lfs/upload/")]


def test_upload_then_downloads_give_the_uploaded_bytes(client, loopback_hub, repo_id, model_folder):
    loopback_hub.clear_requests()
    client.call("upload_folder", repo_id=repo_id, folder=str(model_folder))
    assert len(lfs_uploads(loopback_hub)) == 1  # the .safetensors file went through LFS

    snapshot = Path(client.call("snapshot", repo_id=repo_id))
    for name in ("config.json", "model.safetensors", "sub/notes.txt"):
        downloaded = Path(client.call("download", repo_id=repo_id, filename=name))
        assert downloaded.read_bytes() == (snapshot / name).read_bytes() == (model_folder / name).read_bytes()


def test_upload_mode_follows_the_hub_rules(client, loopback_hub, repo_id, tmp_path):
    files = {
        "small.txt": b"plain text\n",
        "text.safetensors": b"text, but .gitattributes says LFS\n",
        "blob.dat": b"\x00\x01binary",
        "big.txt": b"a" * (10 * 1024 * 1024 + 1),
    }
    loopback_hub.clear_requests()
    client.call("upload_folder", repo_id=repo_id, folder=str(write_files(tmp_path / "upload", files)))
    tree = client.call("list_tree", repo_id=repo_id)
    assert {name: tree[name] for name in files} == {
        "small.txt": "regular",
        "text.safetensors": "lfs",
        "blob.dat": "lfs",
        "big.txt": "lfs",
    }
    assert len(lfs_uploads(loopback_hub)) == 3
    assert Path(client.call("download", repo_id=repo_id, filename="big.txt")).read_bytes() == files["big.txt"]


def test_listing_files_and_tree(client, repo_id, model_folder):
    client.call("upload_folder", repo_id=repo_id, folder=str(model_folder))
    assert sorted(client.call("list_files", repo_id=repo_id)) == [
        ".gitattributes",
        "config.json",
        "model.safetensors",
        "sub/notes.txt",
    ]
    assert client.call("list_tree", repo_id=repo_id) == {
        "sub": "folder",
        ".gitattributes": "regular",
        "config.json": "regular",
        "model.safetensors": "lfs",
    }
    assert client.call("list_tree", repo_id=repo_id, path="sub") == {"sub/notes.txt": "regular"}
    assert "sub/notes.txt" in client.call("list_tree", repo_id=repo_id, recursive=True)


def test_second_upload_of_unchanged_files_sends_nothing(client, loopback_hub, repo_id, model_folder):
    first = client.call("upload_folder", repo_id=repo_id, folder=str(model_folder))
    loopback_hub.clear_requests()
    second = client.call("upload_folder", repo_id=repo_id, folder=str(model_folder))
    assert second == first
    assert lfs_uploads(loopback_hub) == []
    assert not [path for method, path in loopback_hub.requests if method == "POST" and "/commit/" in path]


def test_branch_upload_and_download_by_revision(client, repo_id, model_folder):
    client.call("upload_folder", repo_id=repo_id, folder=str(model_folder))
    client.call("create_branch", repo_id=repo_id, branch="dev")
    (model_folder / "config.json").write_bytes(b'{"hidden_size": 32}\n')
    client.call("upload_folder", repo_id=repo_id, folder=str(model_folder), revision="dev")

    on_dev = client.call("download", repo_id=repo_id, filename="config.json", revision="dev")
    on_main = client.call("download", repo_id=repo_id, filename="config.json")
    assert Path(on_dev).read_bytes() == b'{"hidden_size": 32}\n'
    assert Path(on_main).read_bytes() == b'{"hidden_size": 16}\n'


def test_downloads_pinned_to_a_commit_or_a_tag(client, repo_id, tmp_path):
    folder = write_files(tmp_path / "upload", {"weights.txt": b"version 1\n"})
    first = client.call("upload_folder", repo_id=repo_id, folder=str(folder))
    client.call("create_tag", repo_id=repo_id, tag="v1", revision=first)
    write_files(folder, {"weights.txt": b"version 2\n"})
    second = client.call("upload_folder", repo_id=repo_id, folder=str(folder))

    for revision in (first, "v1"):
        pinned = client.call("download", repo_id=repo_id, filename="weights.txt", revision=revision)
        assert Path(pinned).read_bytes() == b"version 1\n"
    assert Path(client.call("download", repo_id=repo_id, filename="weights.txt")).read_bytes() == b"version 2\n"
    assert client.call("list_refs", repo_id=repo_id) == {"branches": {"main": second}, "tags": {"v1": first}}
    history = client.call("list_commits", repo_id=repo_id)
    assert [oid for oid, _ in history[:2]] == [second, first]
    assert [oid for oid, _ in client.call("list_commits", repo_id=repo_id, revision="v1")][0] == first


def test_commit_listing_follows_pagination_links(client, loopback_hub, repo_id, tmp_path):
    folder = tmp_path / "upload"
    for version in range(3):
        client.call("upload_folder", repo_id=repo_id, folder=str(write_files(folder, {"f.txt": b"%d" % version})))
    loopback_hub.page_size = 2
    loopback_hub.clear_requests()
    try:
        history = client.call("list_commits", repo_id=repo_id)
    finally:
        loopback_hub.page_size = 1000
    assert len(history) == 4  # three uploads and the initial .gitattributes commit
    assert len([path for _, path in loopback_hub.requests if "/commits/" in path]) == 2


def test_pull_request_ref_is_a_revision(client, repo_id, model_folder):
    client.call("upload_folder", repo_id=repo_id, folder=str(model_folder))
    info = client.call("upload_bytes", repo_id=repo_id, path="proposal.txt", content="proposed\n", create_pr=True)
    assert info["pr_revision"] == "refs/pr/1"
    downloaded = client.call("download", repo_id=repo_id, filename="proposal.txt", revision="refs/pr/1")
    assert Path(downloaded).read_bytes() == b"proposed\n"
    assert "proposal.txt" not in client.call("list_files", repo_id=repo_id)


def test_deleted_file_disappears(client, repo_id, model_folder):
    client.call("upload_folder", repo_id=repo_id, folder=str(model_folder))
    client.call("delete_file", repo_id=repo_id, path="sub/notes.txt")
    assert "sub/notes.txt" not in client.call("list_files", repo_id=repo_id)
    with pytest.raises(ClientError, match="EntryNotFoundError"):
        client.call("download", repo_id=repo_id, filename="sub/notes.txt")
    with pytest.raises(ClientError, match="(?s)EntryNotFoundError: .*A file with this name doesn't exist"):
        client.call("delete_file", repo_id=repo_id, path="sub/notes.txt")


def test_client_raises_its_own_not_found_errors(client, repo_id, model_folder):
    client.call("upload_folder", repo_id=repo_id, folder=str(model_folder))
    with pytest.raises(ClientError, match="RepositoryNotFoundError"):
        client.call("download", repo_id="testuser/no-such-repo", filename="config.json")
    with pytest.raises(ClientError, match="RevisionNotFoundError"):
        client.call("download", repo_id=repo_id, filename="config.json", revision="no-such-branch")
    with pytest.raises(ClientError, match="EntryNotFoundError"):
        client.call("download", repo_id=repo_id, filename="no-such-file.json")
    with pytest.raises(ClientError, match="EntryNotFoundError"):
        client.call("list_tree", repo_id=repo_id, path="no-such-folder")


def test_conflicts_are_refused(client, repo_id, model_folder):
    first = client.call("upload_folder", repo_id=repo_id, folder=str(model_folder))
    client.call("upload_bytes", repo_id=repo_id, path="new.txt", content="moved on\n")
    with pytest.raises(ClientError, match="412"):
        client.call("upload_bytes", repo_id=repo_id, path="late.txt", content="stale\n", parent_commit=first)
    client.call("create_branch", repo_id=repo_id, branch="dev")
    with pytest.raises(ClientError, match="409"):
        client.call("create_branch", repo_id=repo_id, branch="dev")
    with pytest.raises(ClientError, match="409"):
        client.call("create_repo", repo_id=repo_id, private=False)


def test_private_flag_shows_in_model_info(client, repo_id):
    client.call("create_repo", repo_id=repo_id + "-private", private=True)
    client.call("create_repo", repo_id=repo_id + "-public", private=False)
    assert client.call("model_info", repo_id=repo_id + "-private")["private"] is True
    assert client.call("model_info", repo_id=repo_id + "-public")["private"] is False


def test_model_info_reports_the_head_commit_and_sizes(client, repo_id, model_folder):
    head = client.call("upload_folder", repo_id=repo_id, folder=str(model_folder))
    info = client.call("model_info", repo_id=repo_id)
    assert info["sha"] == head
    assert info["sizes"]["model.safetensors"] == len(SAFETENSORS_BYTES)


def test_offline_reload_after_the_server_stops(tmp_path, model_folder):
    repo_id, hf_home = "testuser/offline", tmp_path / "hf_home"
    hf_home.mkdir()
    with LoopbackHub(tmp_path / "hub") as hub, ClientWorker(hub.client_env(hf_home)) as online:
        online.call("upload_folder", repo_id=repo_id, folder=str(model_folder))
        online.call("snapshot", repo_id=repo_id)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(hub.url.rsplit(":", 1)[1])), timeout=1).close()

    with ClientWorker(hub.client_env(hf_home, offline=True)) as offline:
        snapshot = Path(offline.call("snapshot", repo_id=repo_id))
        weights = Path(offline.call("download", repo_id=repo_id, filename="model.safetensors"))
        with pytest.raises(ClientError, match="LocalEntryNotFoundError"):
            offline.call("download", repo_id="testuser/never-downloaded", filename="config.json")
    assert weights.read_bytes() == (snapshot / "model.safetensors").read_bytes() == SAFETENSORS_BYTES


def test_command_line_server_prints_its_url_and_cleans_up():
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("hub_server.py"))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = server.stdout.readline().strip()
        storage = Path(server.stderr.readline().split()[1])
        with urllib.request.urlopen(f"{url}/api/whoami-v2", timeout=10) as response:
            assert json.load(response)["name"] == "testuser"
        assert storage.is_dir()
    finally:
        server.terminate()
        server.communicate(timeout=20)
    assert server.returncode == 0
    assert not storage.exists()


def test_raw_protocol_chunked_upload_range_download_and_keep_alive(loopback_hub):
    """What the client rarely does: chunked uploads, resumed (ranged) downloads, a body left unread by an error."""
    content = bytes(range(256)) * 40
    oid = hashlib.sha256(content).hexdigest()
    connection = http.client.HTTPConnection("127.0.0.1", int(loopback_hub.url.rsplit(":", 1)[1]), timeout=10)

    def call(method, path, body=None, headers=None, **options):
        connection.request(method, path, body=body, headers=headers or {}, **options)
        response = connection.getresponse()
        return response.status, response.headers, response.read()

    try:
        assert call("POST", "/api/repos/create", json.dumps({"name": "raw-protocol"}))[0] == 200
        socket_before = connection.sock
        assert call("POST", "/api/no-such-endpoint", b"x" * 5000)[0] == 404  # its body is never read by a handler
        chunks = iter([content[:1000], content[1000:]])
        assert call("PUT", f"/__lfs/upload/{oid}", chunks, encode_chunked=True)[0] == 200
        assert connection.sock is socket_before  # the same connection served all of it
        header = {"key": "header", "value": {"summary": "raw"}}
        lfs_file = {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": oid, "size": len(content)}}
        ndjson = "\n".join(json.dumps(line) for line in (header, lfs_file))
        assert call("POST", "/api/models/testuser/raw-protocol/commit/main", ndjson)[0] == 200

        url = "/testuser/raw-protocol/resolve/main/w.bin"
        status, headers, body = call("GET", url, headers={"Range": "bytes=10000-"})
        assert (status, headers["Content-Range"], body) == (206, "bytes 10000-10239/10240", content[10000:])
        assert call("GET", url, headers={"Range": "bytes=-16"})[2] == content[-16:]
        assert call("GET", url, headers={"Range": "bytes=20000-"})[0] == 416
        status, headers, body = call("HEAD", url)
        assert (status, headers["X-Linked-Etag"], headers["Content-Length"], body) == (200, f'"{oid}"', "10240", b"")
        assert "X-Xet-Hash" not in headers
    finally:
        connection.close()


@pytest.mark.slow
def test_transformers_push_to_hub_and_from_pretrained(client, loopback_hub, repo_id):
    loopback_hub.clear_requests()
    result = client.call("transformers_round_trip", repo_id=repo_id, timeout=300)
    assert result == {"class": "BertModel", "same_keys": True, "same_weights": True}
    assert client.call("list_tree", repo_id=repo_id)["model.safetensors"] == "lfs"
    assert len(lfs_uploads(loopback_hub)) == 1


if __name__ == "__main__":
    serve_client_calls()
