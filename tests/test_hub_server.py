"""The loopback Hub (tests/hub_server.py) against the real huggingface_hub client, in this process.

tests/test_hub.py drives the product through it (vaswani-push, from_pretrained where vaswani is and is not
installed, pinned revisions, offline reloads); these tests pin down the server itself: upload modes, downloads by
revision, the client's own errors, and a loud failure for whatever it does not serve.
"""

import re
from functools import partial
from pathlib import Path

import pytest
from huggingface_hub import HfApi, RepoFolder, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

from hub_server import LoopbackHub

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")  # httpx2
TOKEN = "hf_loopback_token"
FILES = {
    "config.json": b'{"d_model": 16}\n',
    "model.safetensors": b"text, but *.safetensors goes through LFS\n",
    "weights.dat": bytes(range(256)) * 4,  # binary: LFS whatever its name
    "sub/notes.txt": "naïve text\n".encode(),
}


@pytest.fixture(scope="module")
def hub():
    with pytest.MonkeyPatch.context() as patch, LoopbackHub() as server:
        patch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        yield server


@pytest.fixture
def api(hub) -> HfApi:
    return HfApi(endpoint=hub.url, token=TOKEN)


@pytest.fixture
def repo_id(request, api) -> str:
    repo_id = "testuser/" + re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)
    api.create_repo(repo_id)
    return repo_id


@pytest.fixture
def download(hub, tmp_path):
    return partial(hf_hub_download, endpoint=hub.url, token=TOKEN, cache_dir=tmp_path / "cache")


def upload(api: HfApi, repo_id: str, folder: Path, files: dict[str, bytes], **options) -> str:
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return api.upload_folder(repo_id=repo_id, folder_path=folder, **options).oid


def test_uploads_follow_the_hub_rules_and_download_byte_for_byte(hub, api, repo_id, download, tmp_path):
    hub.clear_requests()
    upload(api, repo_id, tmp_path / "upload", FILES)
    assert len([path for method, path in hub.requests if method == "PUT" and path.startswith("/__lfs/upload/")]) == 2
    everything = {entry.path: entry for entry in api.list_repo_tree(repo_id, recursive=True)}
    lfs = {path for path, entry in everything.items() if getattr(entry, "lfs", None)}
    assert lfs == {"model.safetensors", "weights.dat"}
    assert set(everything) == {".gitattributes", "sub", *FILES}

    snapshot = Path(snapshot_download(repo_id, endpoint=hub.url, token=TOKEN, cache_dir=tmp_path / "snapshot"))
    for name, content in FILES.items():
        assert (snapshot / name).read_bytes() == Path(download(repo_id, name)).read_bytes() == content
    sizes = {sibling.rfilename: sibling.size for sibling in api.model_info(repo_id, files_metadata=True).siblings}
    assert {name: sizes[name] for name in FILES} == {name: len(content) for name, content in FILES.items()}


def test_the_tree_lists_one_level_or_everything(api, repo_id, tmp_path):
    upload(api, repo_id, tmp_path / "upload", {"a.txt": b"a", "sub/b.txt": b"b", "sub/deeper/c.txt": b"c"})
    top = {entry.path: isinstance(entry, RepoFolder) for entry in api.list_repo_tree(repo_id)}
    assert top == {".gitattributes": False, "a.txt": False, "sub": True}
    assert {entry.path for entry in api.list_repo_tree(repo_id, path_in_repo="sub")} == {"sub/b.txt", "sub/deeper"}
    deep = {entry.path for entry in api.list_repo_tree(repo_id, path_in_repo="sub", recursive=True)}
    assert deep == {"sub/b.txt", "sub/deeper", "sub/deeper/c.txt"}


def test_branches_and_commits_pin_what_is_downloaded(api, repo_id, download, tmp_path):
    first = upload(api, repo_id, tmp_path / "upload", {"weights.txt": b"version 1\n"})
    api.create_branch(repo_id, branch="dev")
    api.create_branch(repo_id, branch="dev", exist_ok=True)  # what push_folder does: the Hub's 409 is accepted
    with pytest.raises(HfHubHTTPError, match="409"):
        api.create_branch(repo_id, branch="dev")
    second = upload(api, repo_id, tmp_path / "upload", {"weights.txt": b"version 2\n"}, revision="dev")

    for revisions, content in (("main", first), b"version 1\n"), (("dev", second), b"version 2\n"):
        for revision in revisions:
            assert Path(download(repo_id, "weights.txt", revision=revision)).read_bytes() == content
    assert [commit.commit_id for commit in api.list_repo_commits(repo_id, revision="dev")][:2] == [second, first]
    assert api.model_info(repo_id, revision="dev").sha == second


def test_unchanged_files_are_not_uploaded_again(hub, api, repo_id, tmp_path):
    first = upload(api, repo_id, tmp_path / "upload", FILES)
    hub.clear_requests()
    assert upload(api, repo_id, tmp_path / "upload", FILES) == first  # no new commit
    assert [method for method, path in hub.requests if "/commit/" in path or "/__lfs/" in path] == []


def test_the_client_raises_its_own_not_found_errors(api, repo_id, download):
    with pytest.raises(RepositoryNotFoundError):
        download("testuser/no-such-repo", "config.json")
    with pytest.raises(RevisionNotFoundError):
        download(repo_id, ".gitattributes", revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        download(repo_id, "no-such-file.json")
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(repo_id, path_in_repo="no-such-folder"))


def test_what_it_does_not_serve_fails_loudly(api, repo_id):
    with pytest.raises(HfHubHTTPError, match="does not serve POST /api/models/testuser/.*/tag/main"):
        api.create_tag(repo_id, tag="v1")
    with pytest.raises(HfHubHTTPError, match="Unsupported commit operation"):
        api.delete_file(".gitattributes", repo_id)
    assert [entry.path for entry in api.list_repo_tree(repo_id)] == [".gitattributes"]
