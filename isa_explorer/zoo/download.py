"""Downloading one file: progress bar, resume, SHA-256 check, and nothing half-written kept.

The bytes go to ``FILE.part`` beside the destination; only a complete file whose SHA-256
matches is renamed to ``FILE``. An interrupted transfer leaves the ``.part``, and the next
call asks the server for the rest (HTTP ``Range``); a server that ignores ``Range`` sends the
whole file again and the download starts over. A file of the wrong hash is deleted.

Not ``torch.hub.download_url_to_file``: it cannot resume and reports a connection cut mid-file
as a hash mismatch, and researchers fetch 180-300 MB checkpoints over unreliable links.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from filelock import FileLock
from tqdm.auto import tqdm

from isa_explorer.zoo.entries import ZooError

_CHUNK = 1 << 20
#: Seconds without data before a download is given up (and may be resumed).
TIMEOUT_S = 60.0


class DownloadError(ZooError):
    """The file could not be fetched or verified; nothing was placed at the destination."""


def download(url: str, dest: str | Path, sha256_prefix: str, progress: bool = True) -> Path:
    """Fetch ``url`` to ``dest``, resuming a previous partial download, and verify its hash.

    Args:
        url: ``http(s)://`` or ``file://`` URL.
        dest: Where the verified file goes (its folder is created).
        sha256_prefix: Hex digits the file's SHA-256 must start with (8 to 64).
        progress: Show a tqdm progress bar.

    Returns:
        ``dest``. If it already exists with the right hash nothing is fetched.

    Raises:
        DownloadError: Network error, HTTP error, a transfer cut short (the ``.part`` is
            kept for a retry to resume) or a hash mismatch (the file is deleted).
    """
    dest = Path(dest)
    prefix = sha256_prefix.lower()
    locks = dest.parent / ".locks"
    locks.mkdir(parents=True, exist_ok=True)  # and dest's folder
    with FileLock(locks / f"{dest.name}.lock"):  # one download per file, across processes
        if dest.is_file():
            if _sha256(dest).hexdigest().startswith(prefix):
                return dest
            dest.unlink()  # a file placed by hand with the wrong content
        part = dest.with_name(dest.name + ".part")
        resumed = part.is_file() and part.stat().st_size > 0
        digest = _fetch(url, part, progress)
        if resumed and not digest.startswith(prefix):  # perhaps a stale .part: once from zero
            part.unlink(missing_ok=True)
            digest = _fetch(url, part, progress)
        if not digest.startswith(prefix):
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"{url} does not have the expected SHA-256 (expected {prefix}..., got "
                f"{digest[: max(8, len(prefix))]}...): the file was deleted. If the mirror "
                "is right, its entry's sha256 is not"
            )
        os.replace(part, dest)
    return dest


def _fetch(url: str, part: Path, progress: bool) -> str:
    """Download ``url`` into ``part`` (resuming it) and return the file's SHA-256 hex digest."""
    have = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "isa-explorer"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S
        )
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the .part is not a prefix the server knows: start over
            part.unlink()
            return _fetch(url, part, progress)
        raise DownloadError(f"downloading {url} failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise DownloadError(f"cannot reach {url} ({reason})") from None
    with response:
        resumed = have and getattr(response, "status", 200) == 206
        start = re.match(r"bytes (\d+)-", response.headers.get("Content-Range") or "")
        if resumed and not (start and int(start.group(1)) == have):
            response.close()  # a 206 of other bytes than the rest of the .part: start over
            part.unlink()
            return _fetch(url, part, progress)
        if not resumed:
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None and length.isdigit() else None
        hasher = _sha256(part) if resumed else hashlib.sha256()
        written = have
        with (
            part.open("ab" if resumed else "wb") as f,
            tqdm(
                total=total,
                initial=have,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            try:
                while block := response.read(_CHUNK):
                    f.write(block)
                    hasher.update(block)
                    written += len(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as e:
                raise _cut_short(url, written, total, e) from None
    if total is not None and written != total:
        raise _cut_short(url, written, total, "the server closed the connection")
    return hasher.hexdigest()


def _cut_short(url: str, written: int, total: int | None, why: object) -> DownloadError:
    of = f" of {total}" if total is not None else ""
    return DownloadError(
        f"the download of {url} stopped after {written}{of} bytes ({why}); run the same "
        "command again to resume it"
    )


def _sha256(path: Path) -> hashlib._Hash:
    """The SHA-256 of a file's bytes (a hash object, to add more bytes to)."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256")
