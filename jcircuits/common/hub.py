"""The one way the package reaches the Hugging Face Hub: references, the cache, offline mode, clear errors.

Models, transcoders and the preflight all resolve through here, so they agree on what a reference is and on when
the network may be used. A reference is ``org/repo``, ``org/repo/sub/path[@revision]`` or
``hf://org/repo[/sub/path][?revision=…]``. Offline mode is ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` (any of
1/ON/YES/TRUE), read at call time, as is the cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``; huggingface_hub itself
reads them once, at import). Downloads go through ``huggingface_hub``; nothing here talks to the network itself.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from urllib.parse import parse_qs, urlparse

__all__ = ["HubRef", "parse_ref", "parse_hf_uri", "offline", "cache_dir", "hub_file", "hub_snapshot"]

_REF = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[^@?]*)?(@[\w./-]+)?$")


@dataclasses.dataclass(frozen=True)
class HubRef:
    """A file or folder in a Hub repository: ``path`` inside it (``None``: the root) at ``revision``."""

    repo_id: str
    path: str | None = None
    revision: str | None = None


def _truthy(v: str | None) -> bool:
    return (v or "").strip().upper() in ("1", "ON", "YES", "TRUE")


def offline() -> bool:
    """Whether the Hub may not be contacted (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    return _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE"))


def cache_dir() -> str | None:
    """The hub cache named by the environment now (``None``: huggingface_hub's default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def parse_hf_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``hf://org/repo/path?revision=r`` → ``(repo_id, path or None, revision or None)``."""
    u = urlparse(uri)
    if u.scheme != "hf":
        raise ValueError(f"not an hf:// URI: {uri!r}")
    parts = [p for p in (u.netloc + u.path).split("/") if p]
    if len(parts) < 2:
        raise ValueError(f"hf:// URI needs an org/repo: {uri!r}")
    rev = (parse_qs(u.query).get("revision") or [None])[0] or None
    return "/".join(parts[:2]), ("/".join(parts[2:]) or None), rev


def parse_ref(s: str) -> HubRef | None:
    """The ``HubRef`` that ``s`` names, or ``None`` when ``s`` is not shaped like a Hub reference."""
    if s.startswith("hf://"):
        return HubRef(*parse_hf_uri(s))
    if not _REF.match(s):
        return None
    ref, _, rev = s.partition("@")
    parts = ref.split("/")
    return HubRef("/".join(parts[:2]), "/".join(parts[2:]) or None, rev or None)


def _error(repo_id: str, what: str, revision: str | None, e: Exception) -> FileNotFoundError:
    where = cache_dir() or "the default Hugging Face cache"
    if offline():
        how = "HF_HUB_OFFLINE is set; download it first (unset HF_HUB_OFFLINE, or `huggingface-cli download`)"
    else:
        how = f"the Hub could not provide it ({type(e).__name__}: {e})"
    return FileNotFoundError(
        f"{what} of {repo_id!r} (revision {revision or 'main'}) is not in {where} and {how}, or pass a local path"
    )


def hub_file(repo_id: str, filename: str, revision: str | None = None) -> Path:
    """One file of a repository, from the cache or (online) the Hub."""
    import huggingface_hub

    try:
        got = huggingface_hub.hf_hub_download(
            repo_id=repo_id, filename=filename, revision=revision, cache_dir=cache_dir(), local_files_only=offline()
        )
    except Exception as e:  # EntryNotFound, LocalEntryNotFound, connection errors, …
        raise _error(repo_id, filename, revision, e) from e
    return Path(got)


def hub_snapshot(repo_id: str, patterns: list[str], revision: str | None = None, subdir: str | None = None) -> Path:
    """The files of a repository matching ``patterns`` (under ``subdir`` when given), from the cache or the Hub;
    returns the local folder (``subdir`` inside the snapshot)."""
    import huggingface_hub

    if subdir:
        patterns = [f"{subdir}/{p}" for p in patterns]
    try:
        local = huggingface_hub.snapshot_download(
            repo_id, revision=revision, allow_patterns=patterns, cache_dir=cache_dir(), local_files_only=offline()
        )
    except Exception as e:
        raise _error(repo_id, "the files " + ", ".join(patterns), revision, e) from e
    return Path(local) / subdir if subdir else Path(local)
