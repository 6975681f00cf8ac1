"""File modes: what we write gets the permission bits ``open()`` would give it (0o666 less the umask), or keeps
those of the file it replaces. Writers that go through a temporary file (``mkstemp``) or through the
``safetensors`` package would otherwise leave every output 0600."""

from __future__ import annotations

import os

__all__ = ["file_mode", "apply_mode"]


def file_mode(path: str | os.PathLike) -> int:
    """The permission bits a file written at ``path`` should have: the existing file's, else 0o666 less the umask."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def apply_mode(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Give ``tmp`` (about to replace ``final``) the mode ``final`` should have."""
    os.chmod(tmp, file_mode(final))
