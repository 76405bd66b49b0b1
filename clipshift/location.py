"""Where things live: a local folder or an object-storage URI, and how to reach it.

`Location.parse("s3://bucket/prefix")` keeps the URI and the storage options Lance needs
(credentials and endpoint from the standard AWS_* variables); `Location.parse("./store")` is
an absolute local path with no options. The store (`--db`) and the image sources (`ingest
s3://bucket/images/`) are both reached through a Location, so one set of credentials serves
both. Listing and reading objects goes through pyarrow's filesystems (pyarrow ships with
Lance, so object storage needs no further dependency).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from . import ClipshiftError, first_line

# object stores Lance reaches with the same storage options (and pyarrow lists and reads)
OBJECT_SCHEMES = ("s3", "gs", "az")


def is_object_uri(value: str | os.PathLike) -> bool:
    return isinstance(value, str) and value.split("://", 1)[0] in OBJECT_SCHEMES and "://" in value


def storage_options_from_env(scheme: str) -> dict[str, str]:
    """Lance storage options for `scheme` from the environment.

    S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION (or
    AWS_DEFAULT_REGION) and AWS_ENDPOINT_URL; an http:// endpoint (a local S3-compatible server
    such as MinIO or moto) is allowed explicitly. gs:// and az:// take nothing here: Lance's
    object store reads GOOGLE_* and AZURE_* itself.
    """
    if scheme != "s3":
        return {}
    env = os.environ
    options = {
        "aws_access_key_id": env.get("AWS_ACCESS_KEY_ID"),
        "aws_secret_access_key": env.get("AWS_SECRET_ACCESS_KEY"),
        "aws_session_token": env.get("AWS_SESSION_TOKEN"),
        "aws_region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
        "aws_endpoint": env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"),
    }
    options = {key: value for key, value in options.items() if value}
    if options.get("aws_endpoint", "").startswith("http://"):
        options["allow_http"] = "true"
    return options


@dataclass(frozen=True)
class Location:
    """A folder on this machine (`uri` is its absolute path) or an object-storage prefix."""

    uri: str
    storage_options: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def parse(cls, value: str | os.PathLike | Location) -> Location:
        if isinstance(value, Location):
            return value
        if is_object_uri(value):
            scheme, rest = value.split("://", 1)
            if not rest.strip("/"):
                raise ClipshiftError(f"{value}: name a bucket, e.g. {scheme}://bucket/prefix")
            return cls(f"{scheme}://{rest.rstrip('/')}", storage_options_from_env(scheme))
        if isinstance(value, str) and "://" in value:
            scheme = value.split("://", 1)[0]
            raise ClipshiftError(
                f"{value}: {scheme}:// is not supported; use a local folder or "
                + ", ".join(f"{s}://" for s in OBJECT_SCHEMES)
            )
        return cls(str(Path(value).expanduser().absolute()))

    @property
    def is_local(self) -> bool:
        return not is_object_uri(self.uri)

    @property
    def path(self) -> Path:
        """The local folder (only for a local location)."""
        assert self.is_local, self.uri
        return Path(self.uri)

    def child(self, name: str) -> str:
        """The URI (or local path) of `name` inside this location."""
        return f"{self.uri}/{name}"

    def __str__(self) -> str:
        return self.uri

    # -- object storage through pyarrow ---------------------------------------------------

    def filesystem(self):
        """(pyarrow FileSystem, path within it) for this object-storage location."""
        scheme, rest = self.uri.split("://", 1)
        return _filesystem(scheme, tuple(sorted(self.storage_options.items()))), rest

    def list_files(self) -> list[str]:
        """Every object under this prefix (or the object itself), as sorted URIs."""
        from pyarrow import fs as pafs

        filesystem, path = self.filesystem()
        scheme = self.uri.split("://", 1)[0]
        try:
            info = filesystem.get_file_info(path)
            if info.type == pafs.FileType.File:
                return [self.uri]
            if info.type == pafs.FileType.NotFound:
                raise ClipshiftError(f"no such file or folder: {self.uri}")
            found = filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
        except (OSError, ValueError) as exc:
            raise ClipshiftError(f"cannot list {self.uri}: {first_line(exc)}") from None
        return sorted(f"{scheme}://{f.path}" for f in found if f.type == pafs.FileType.File)

    def list_dirs(self) -> list[str]:
        """The names of the folders directly under this prefix ([] if there is none)."""
        from pyarrow import fs as pafs

        filesystem, path = self.filesystem()
        try:
            found = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        except (OSError, ValueError) as exc:
            raise ClipshiftError(f"cannot list {self.uri}: {first_line(exc)}") from None
        return sorted(f.base_name for f in found if f.type == pafs.FileType.Directory)

    def file_sizes(self, name: str = "") -> dict[str, int]:
        """Every file under this location, or under its folder `name`: its path relative to
        that folder (with /) and its size in bytes."""
        if self.is_local:
            root = self.path / name if name else self.path
            sizes = {}
            for path in root.rglob("*"):
                with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                    if path.is_file():
                        sizes[path.relative_to(root).as_posix()] = path.stat().st_size
            return sizes
        from pyarrow import fs as pafs

        filesystem, root = self.filesystem()
        root = f"{root}/{name}" if name else root
        try:
            found = filesystem.get_file_info(
                pafs.FileSelector(root, recursive=True, allow_not_found=True)
            )
        except (OSError, ValueError) as exc:
            raise ClipshiftError(f"cannot list {self.uri}: {first_line(exc)}") from None
        return {f.path[len(root) + 1 :]: f.size for f in found if f.type == pafs.FileType.File}

    def remove(self, name: str) -> None:
        """Delete the folder `name` under this location and everything in it."""
        if self.is_local:
            shutil.rmtree(self.path / name)
            return
        filesystem, root = self.filesystem()
        with contextlib.suppress(FileNotFoundError):
            filesystem.delete_dir(f"{root}/{name}")

    def rename(self, old: str, new: str) -> None:
        """Rename the folder `old` under this location to `new` (a Lance dataset: its files
        are addressed relative to its root, so moved files stay a valid dataset).

        A local folder is renamed atomically. Object storage has no rename: every object is
        copied (server-side) and then the old ones deleted, manifests last both times, so the
        copy opens at the latest version only once complete and the old folder opens until
        nothing else of it is left. A move interrupted at any point completes when called
        again: a complete copy (it opens at the old one's version or later) is kept and the
        old folder's remnants deleted; an incomplete one is deleted and copied again.
        """
        if self.is_local:
            os.rename(self.path / old, self.path / new)
            return
        from pyarrow import fs as pafs

        filesystem, root = self.filesystem()
        source, target = f"{root}/{old}", f"{root}/{new}"

        def files(folder: str) -> list[str]:
            selector = pafs.FileSelector(folder, recursive=True, allow_not_found=True)
            found = filesystem.get_file_info(selector)
            return [f.path for f in found if f.type == pafs.FileType.File]

        def is_manifest(path: str) -> bool:
            return "/_versions/" in path or path.endswith("/_latest.manifest")

        old_version, new_version = _version(self, old), _version(self, new)
        complete = new_version is not None and (old_version is None or new_version >= old_version)
        if not complete:
            with contextlib.suppress(FileNotFoundError):
                filesystem.delete_dir(target)
            # data, deletion and index files first, manifests last
            for path in sorted(files(source), key=is_manifest):
                filesystem.copy_file(path, target + path[len(source) :])
        for path in sorted(files(source), key=is_manifest):
            filesystem.delete_file(path)
        with contextlib.suppress(FileNotFoundError, OSError):
            filesystem.delete_dir(source)


def _version(location: Location, name: str) -> int | None:
    """The latest version of the Lance dataset `name` under `location`; None if none opens."""
    import lance

    try:
        uri = location.child(name)
        return lance.dataset(uri, storage_options=location.storage_options).version
    except (ValueError, OSError):
        return None


def read_object(uri: str, storage_options: dict[str, str]) -> bytes:
    """The bytes of one object. OSError when it cannot be read (recorded as a read failure)."""
    scheme, rest = uri.split("://", 1)
    filesystem = _filesystem(scheme, tuple(sorted(storage_options.items())))
    with filesystem.open_input_stream(rest) as stream:
        return stream.read()


@functools.lru_cache(maxsize=8)
def _filesystem(scheme: str, options: tuple[tuple[str, str], ...]):
    from pyarrow import fs as pafs

    opts = dict(options)
    if scheme == "s3":
        endpoint = opts.get("aws_endpoint")
        kwargs = {
            "access_key": opts.get("aws_access_key_id"),
            "secret_key": opts.get("aws_secret_access_key"),
            "session_token": opts.get("aws_session_token"),
            "region": opts.get("aws_region"),
        }
        if endpoint:
            scheme_part, _, host = endpoint.partition("://")
            kwargs.update(endpoint_override=host or endpoint, scheme=scheme_part or "https")
        return pafs.S3FileSystem(**{k: v for k, v in kwargs.items() if v is not None})
    if scheme == "gs":
        return pafs.GcsFileSystem()
    if scheme == "az":
        account = os.environ.get("AZURE_STORAGE_ACCOUNT_NAME")
        if not account:
            raise ClipshiftError("az:// needs AZURE_STORAGE_ACCOUNT_NAME (and a key or token)")
        return pafs.AzureFileSystem(
            account_name=account, account_key=os.environ.get("AZURE_STORAGE_ACCOUNT_KEY")
        )
    raise ClipshiftError(f"{scheme}:// is not supported")
