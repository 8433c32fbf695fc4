"""`tensor-surgery download`: a model from the Hugging Face Hub into its cache, every file verified.

`huggingface_hub` does the transfer (its cache layout, locks, redirects, resumable blobs); this
adds the check it does not make: each file's bytes are hashed and compared with the hub's own
metadata for that commit (`model_info(files_metadata=True)`): the sha256 of LFS files, the git
blob id (sha1 of `blob <size>\\0<bytes>`) of small files kept in git, where the hub publishes no
sha256. A cached file that does not match is deleted and downloaded again, never used; a
download that does not match is deleted and reported (exit 1).

The hub is `HF_ENDPOINT` (read at each call, so tests can point it at a local server) or
huggingface.co; the cache is `--cache-dir`, else HF_HUB_CACHE / HF_HOME's.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from ..errors import InvalidRequest, ModelNotFound, SurgeryError

READ_BYTES = 8 << 20


class DownloadFailed(SurgeryError):
    code = "download_failed"
    http_status = 502
    exit_code = 1


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    """sha256 of the file, or its git blob id (`algorithm="git-sha1"`)."""
    size = os.path.getsize(path)
    h = hashlib.sha256() if algorithm == "sha256" else hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as f:
        while chunk := f.read(READ_BYTES):
            h.update(chunk)
    return h.hexdigest()


def _expected(sibling) -> tuple[str, str, int | None]:
    """(algorithm, hex digest, size) the hub states for a file."""
    if sibling.lfs is not None:
        return "sha256", sibling.lfs.sha256.lower(), sibling.lfs.size
    if sibling.blob_id:
        return "git-sha1", sibling.blob_id.lower(), sibling.size
    raise DownloadFailed(
        f"the hub gives no checksum for {sibling.rfilename!r} (no LFS sha256, no blob id): it cannot be "
        "verified, so it is not downloaded", file=sibling.rfilename)


def _matches(path: str, algorithm: str, digest: str, size: int | None) -> bool:
    if size is not None and os.path.getsize(path) != size:
        return False
    return file_digest(path, algorithm) == digest


def _remove_cached(pointer: str) -> None:
    """Delete a cached file: its blob (what the snapshot entry links to) and the entry itself."""
    blob = os.path.realpath(pointer)
    for p in (blob, pointer):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def download_model(
    repo_id: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    endpoint: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Download (or reuse from the cache) every file of `repo_id` at `revision`, verified.

    Returns `{"path": snapshot folder, "model_id", "revision": commit, "files": [{name, size,
    algorithm, digest, status: cached|downloaded|redownloaded}]}`.
    """
    import httpx2
    from huggingface_hub import HfApi, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import (
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    cache = str(cache_dir) if cache_dir is not None else None
    api = HfApi(endpoint=endpoint)
    net_errors = (HfHubHTTPError, OfflineModeIsEnabled, httpx2.HTTPError, OSError)
    try:
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
    except RevisionNotFoundError:
        raise InvalidRequest(
            f"revision {revision!r} does not exist in {repo_id}: give a branch, tag or commit of that repository",
            field="revision", model=repo_id) from None
    except RepositoryNotFoundError:
        raise ModelNotFound(
            f"no model {repo_id!r} on {endpoint or 'the hub'} (or it is private: log in with `hf auth login`)",
            model=repo_id) from None
    except ValueError as e:  # a malformed repo id
        raise InvalidRequest(f"{repo_id!r} is not a model id (owner/name): {e}", field="model_id") from None
    except net_errors as e:
        raise DownloadFailed(f"could not reach the hub for {repo_id}: {e}", model=repo_id) from None
    commit = info.sha
    siblings = list(info.siblings or [])
    if not commit or not siblings:
        raise DownloadFailed(f"the hub listed no commit or no files for {repo_id}", model=repo_id)
    wanted = [(s, *_expected(s)) for s in siblings]
    total = sum(size or 0 for *_, size in wanted)
    done = 0
    if progress:
        progress(done, total)
    files = []
    snapshot = None
    for sib, algorithm, digest, size in wanted:
        name = sib.rfilename
        status = "downloaded"
        cached = try_to_load_from_cache(repo_id, name, cache_dir=cache, revision=commit)
        if isinstance(cached, str) and os.path.isfile(cached):
            if _matches(cached, algorithm, digest, size):
                status = "cached"
            else:
                _remove_cached(cached)
                status = "redownloaded"
        if status != "cached":
            try:
                cached = hf_hub_download(repo_id, name, revision=commit, cache_dir=cache, endpoint=endpoint,
                                         force_download=status == "redownloaded")
            except ValueError as e:  # an unsafe file name in the listing, among others
                raise DownloadFailed(f"{repo_id}: cannot download {name!r}: {e}", file=name) from None
            except net_errors as e:
                raise DownloadFailed(f"{repo_id}: downloading {name!r} failed: {e}", file=name) from None
            if not _matches(cached, algorithm, digest, size):
                _remove_cached(cached)
                raise DownloadFailed(
                    f"{repo_id}: {name!r} does not match the hub's {algorithm} {digest} after download "
                    "(removed from the cache): the transfer or the server is corrupting it; try again",
                    file=name, expected=digest)
        files.append({"name": name, "size": os.path.getsize(cached), "algorithm": algorithm, "digest": digest,
                      "status": status})
        snapshot = str(Path(cached).parents[len(Path(name).parts) - 1])
        done += size or 0
        if progress:
            progress(done, total)
    return {"path": snapshot, "model_id": repo_id, "revision": commit, "files": files}
