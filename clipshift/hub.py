"""Where a model comes from: a local folder, the local Hugging Face cache, or the hub, and
whether the hub can be reached. Light: imports neither torch nor transformers, so a caller
can refuse an unavailable model before paying for those imports."""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from . import ClipshiftError, first_line

# How long the hub may take to accept a connection before a model missing from the local
# cache is reported as unreachable: without this check, transformers retries for ~30 s.
HUB_PROBE_SECONDS = 1.5
# folder_revision's digests by the weight files' (path, size, mtime, inode): ingest reads a
# folder's identity before the model loads and again after (a file replaced meanwhile is
# caught); an unchanged folder is not hashed twice (ViT-B/32's 600 MB: half a second each).
_DIGESTS: dict[tuple, str] = {}
# one hash at a time: a caller waits for the one under way (`ResolvedModel.hash_ahead`)
# rather than hashing the same files beside it
_HASHING = threading.Lock()


def load_pretrained(loader, source: str, **kwargs):
    """`loader.from_pretrained(source)` from the local cache (or folder) first; from the hub
    only when that fails and the hub accepts a connection within HUB_PROBE_SECONDS.

    Offline, a model missing from the cache thus fails in about a second with an OSError
    saying the hub cannot be reached, instead of after transformers' retries."""
    try:
        return loader.from_pretrained(source, local_files_only=True, **kwargs)
    except OSError:
        if Path(source).is_dir() or hub_offline():
            raise
    if not hub_reachable():
        raise OSError(f"{source} is not cached and the hub cannot be reached (offline)")
    return loader.from_pretrained(source, **kwargs)


def in_hub_cache(model_name: str) -> bool:
    """Whether the local Hugging Face cache holds the model's config (an id it cannot even
    parse counts as not cached: the load reports it)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(model_name, "config.json"), str)
    except Exception:  # noqa: BLE001 - e.g. HFValidationError for a path-like id
        return False


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_reachable(timeout: float = HUB_PROBE_SECONDS) -> bool:
    """Whether the Hugging Face endpoint (HF_ENDPOINT) accepts a TCP connection in time."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def weights_revision(model_name: str) -> str | None:
    """The weights' identity as `Encoder.revision` gives it, without loading them (no torch):
    a hash of a local folder's weight files, or the hub commit of the cached snapshot. None
    where only loading the model can tell (not cached yet)."""
    local = Path(model_name).expanduser()
    if local.is_dir():
        return folder_revision(local.resolve())
    if not in_hub_cache(model_name):
        return None
    from huggingface_hub import try_to_load_from_cache

    # the cache keeps each commit's files under snapshots/<commit>/, as transformers reads it
    config = Path(try_to_load_from_cache(model_name, "config.json"))
    return config.parent.name if config.parent.parent.name == "snapshots" else None


def folder_revision(folder: Path) -> str:
    """A hash of a model folder's weight files (hashing ViT-B/32's 600 MB takes half a
    second); "unknown" for a folder without any."""
    weights = sorted(p for p in folder.glob("*") if p.suffix in (".safetensors", ".bin"))
    if not weights:
        return "unknown"
    key = tuple((str(p), (s := p.stat()).st_size, s.st_mtime_ns, s.st_ino) for p in weights)
    with _HASHING:
        if key not in _DIGESTS:
            digest = hashlib.sha256()
            for path in weights:
                with open(path, "rb") as handle:
                    while chunk := handle.read(1 << 24):
                        digest.update(chunk)
            _DIGESTS[key] = "sha256:" + digest.hexdigest()[:16]
        return _DIGESTS[key]


@dataclass(frozen=True)
class ResolvedModel:
    """--model resolved once: where its weights load from, and their identity read without
    loading them. The encoder loads it and ingest names the run by it, neither asking the hub
    again."""

    name: str  # as given: it names a run whose weights have no identity ("unknown")
    source: str  # what from_pretrained loads, and what a run records: a folder's full path
    local_dir: Path | None  # the folder, or None for a hub id

    @functools.cached_property
    def revision(self) -> str | None:
        """`weights_revision`, read on first use: hashing a folder's weights takes time
        (half a second for ViT-B/32) that only ingest, which names a run by it, spends."""
        return weights_revision(self.name)

    def hash_ahead(self) -> Future:
        """Read `revision` on a thread of its own, so that a caller's imports overlap the hash
        of a folder's weights (hashlib works outside the GIL); `revision` read meanwhile waits
        for it. The future's result is the revision."""
        future: Future = Future()

        def run() -> None:
            try:
                future.set_result(self.revision)
            except BaseException as exc:  # noqa: BLE001 - the reader of the future gets it
                future.set_exception(exc)

        threading.Thread(target=run, name="clipshift-hash", daemon=True).start()
        return future


def model_config(model: ResolvedModel) -> dict | None:
    """The model's config.json, from its folder or the local cache, without transformers; None
    where neither has it (a model that is yet to be downloaded) or it does not parse."""
    import json

    path = model_file(model, "config.json")
    if not path:
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def model_folder(model: ResolvedModel) -> Path | None:
    """The folder that holds the checkpoint's files: the model's own, or for a hub id its
    snapshot in the local cache; None where the cache has none."""
    if model.local_dir is not None:
        return model.local_dir
    config = model_file(model, "config.json")
    return config.parent if config else None


def model_file(model: ResolvedModel, filename: str) -> Path | bool | None:
    """One of the checkpoint's files, without transformers: its path in the model's folder or
    the local cache; False where it is known not to exist (not in the folder, or the cache
    recorded that the hub has none); None where only the hub can tell."""
    if model.local_dir is not None:
        path = model.local_dir / filename
        return path if path.is_file() else False
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(model.source, filename)
    except Exception:  # noqa: BLE001 - as in_hub_cache
        return None
    if isinstance(cached, str):
        return Path(cached)
    return None if cached is None else False


def resolve_model(model_name: str) -> ResolvedModel:
    """`model_name` as a ResolvedModel; a ClipshiftError at once where it is neither a folder
    nor cached and the hub cannot be reached (`require_model`)."""
    require_model(model_name)
    local = Path(model_name).expanduser()
    local_dir = local.resolve() if local.is_dir() else None
    return ResolvedModel(model_name, str(local_dir) if local_dir else model_name, local_dir)


def require_model(model_name: str) -> None:
    """ClipshiftError at once when `model_name` is neither a folder nor in the local cache and
    the hub cannot be reached (or HF_HUB_OFFLINE is set); otherwise nothing."""
    local = Path(model_name).expanduser()
    if local.is_dir() or in_hub_cache(model_name):
        return
    if hub_offline() or not hub_reachable():
        unreachable = OSError("not in the cache and the hub cannot be reached (offline)")
        raise ClipshiftError(load_error(model_name, local, unreachable))


def load_error(model_name: str, local: Path, exc: Exception) -> str:
    if local.is_dir():
        return f"cannot load a model from {local}: {first_line(exc)}"
    if model_name.startswith((".", "/", "~")) or model_name.count("/") > 1:
        return f"--model {model_name}: no such directory"
    if (
        os.environ.get("HF_HUB_OFFLINE")
        or "offline" in str(exc).lower()
        or "connect" in str(exc).lower()
    ):
        return (
            f"cannot load {model_name}: it is not in the Hugging Face cache and the hub cannot be "
            "reached. Download it once where the hub is reachable, or pass --model DIR (a folder "
            "made with save_pretrained)"
        )
    return f"cannot load model {model_name}: {first_line(exc)}"
