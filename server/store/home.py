"""The data dir (TUNEWIRE_HOME) is private to the user who runs Tunewire: it holds every
org's uploads, models and keys, so no other local user may read it."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("tunewire.store")

PRIVATE_UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600


def make_private(home: Path) -> None:
    """Create `home` 0700 and take group and other access from everything already under
    it (a home made by an older version, or by `tunewire models init-tiny`). The umask it
    sets covers what this process creates from now on, and the workers it starts, which
    inherit it. Symlinks are left alone: what they point to is not the home's."""
    os.umask(PRIVATE_UMASK)
    home.mkdir(parents=True, exist_ok=True)
    tightened = _tighten(home, DIR_MODE)
    for root, dirs, files in os.walk(home):
        for name in dirs:
            tightened += _tighten(Path(root, name), DIR_MODE)
        for name in files:
            tightened += _tighten(Path(root, name), FILE_MODE)
    if tightened:
        log.warning(
            "took group and other access away from the data dir",
            extra={"fields": {"home": str(home), "entries": tightened}},
        )


def _tighten(path: Path, mode: int) -> int:
    """chmod `path` to `mode` if it lets group or others in (and is no symlink); 1 if
    it did."""
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) or stat.S_IMODE(info.st_mode) & 0o077 == 0:
        return 0
    os.chmod(path, mode)
    return 1
