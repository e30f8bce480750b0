"""What the web app lets in: who may connect, which paths the page may name, which uploads are read.

Plain Python (no trame, no Slicer, no torch), so every rule here is tested without a browser or a server and the
CLI can refuse a bad start before it imports anything heavy. Each refusal is one sentence the page or the
terminal shows as it is.

- Binding: 127.0.0.1 unless told otherwise; any address that is not loopback needs a token (`--token` or
  CONTRASTSEG_WEB_TOKEN), since anyone who can reach the port could otherwise read the CTs and write the
  dataset.
- Paths: the page never sends a path to open, only a name from the list of files under `--data-dir`;
  `confined` resolves it (symlinks included) and refuses anything that lands outside that folder.
- Uploads: a size limit checked before anything is written, a file name reduced to a safe base name, and a
  zipped DICOM series unpacked with limits on its members (count, total size, compression ratio, paths).
  The CT itself is then checked by the engine's own reader (`contrastseg.io.read_ct`), so its messages are
  the CLI's.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
import stat
import zipfile
from pathlib import Path

from contrastseg.errors import ContrastSegError

TOKEN_ENV = "CONTRASTSEG_WEB_TOKEN"
MIN_TOKEN_CHARS = 12
DEFAULT_MAX_UPLOAD_MB = 1024  # a 512x512x1000 int16 CT is 0.5 GB; a zipped DICOM series is smaller
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}

NIFTI_SUFFIXES = (".nii", ".nii.gz")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + (".nrrd", ".mha", ".mhd")
ZIP_SUFFIXES = (".zip",)
MAX_ZIP_MEMBERS = 5000  # the longest CT series here has 129 slices; a whole-body thin-slice study a few thousand
MAX_ZIP_RATIO = 200  # DICOM slices compress a few times; a zip bomb by thousands


# ------------------------------------------------------------------------------------------- who may connect
def is_loopback(host: str) -> bool:
    """True for addresses only this computer can reach (127.0.0.0/8, ::1, localhost)."""
    host = (host or "").strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(given: str | None, environ: dict | None = None) -> str | None:
    """The token from `--token`, else from CONTRASTSEG_WEB_TOKEN; None when neither is set (or both empty)."""
    environ = os.environ if environ is None else environ
    token = given if given is not None else environ.get(TOKEN_ENV)
    token = (token or "").strip()
    return token or None


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen where others can connect without a token, and refuse a token too short to guess-proof.

    Why: the app reads CTs and writes the local dataset; on 0.0.0.0 or a LAN address every computer that can
    reach the port could do the same."""
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise ContrastSegError(f"the token is {len(token)} characters long; use at least {MIN_TOKEN_CHARS} "
                               "(for example: python -c \"import secrets; print(secrets.token_urlsafe())\")")
    if not is_loopback(host) and token is None:
        raise ContrastSegError(f"listening on {host} lets other computers reach the app; give --token (or set "
                               f"{TOKEN_ENV}) so that only people who have the token can use it, or keep the "
                               "default address 127.0.0.1")


def token_matches(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison; with no token configured everything matches, with one, only that token."""
    if expected is None:
        return True
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8"))


# ------------------------------------------------------------------------------------------- paths
def confined(name: str, root: Path) -> Path:
    """`root / name`, resolved, if it stays inside `root` (symlinks followed); else one sentence.

    The page sends names it was given from `list_data_files`; anything else (an absolute path, `..`, a link
    that leads out) is refused here, before a file is opened."""
    if root is None:
        raise ContrastSegError("no folder was allowed for reading files (start the app with --data-dir DIR)")
    if not isinstance(name, str) or not name.strip() or "\x00" in name:
        raise ContrastSegError("choose a file from the list")
    base = Path(root).resolve()
    if Path(name).is_absolute():
        raise ContrastSegError(f"'{name}' is outside the allowed folder; choose a file from the list")
    target = (base / name).resolve()
    if target != base and base not in target.parents:
        raise ContrastSegError(f"'{name}' is outside the allowed folder; choose a file from the list")
    if not target.exists():
        raise ContrastSegError(f"'{name}' does not exist in the allowed folder (any more)")
    return target


def _looks_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def list_data_files(root: Path | None, max_entries: int = 2000, max_depth: int = 4) -> list[str]:
    """The CTs under `root` the page may offer, as names relative to it: image files (NIfTI, NRRD, MHA), zipped
    series, and folders that hold DICOM files (the first file is checked). Symlinks leading out are skipped."""
    if root is None:
        return []
    base = Path(root).resolve()
    found: list[str] = []
    for folder, dirs, files in os.walk(base):
        here = Path(folder)
        depth = len(here.relative_to(base).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < max_depth else []
        names = sorted(f for f in files if not f.startswith("."))
        rel = here.relative_to(base)
        for f in names:
            if f.lower().endswith(VOLUME_SUFFIXES + ZIP_SUFFIXES) and _inside(here / f, base):
                found.append(str(rel / f))
        if len(names) >= 2 and _looks_dicom(here / names[0]) and here != base and _inside(here, base):
            found.append(str(rel))
        if len(found) >= max_entries:
            break
    return sorted(found)[:max_entries]


def _inside(path: Path, base: Path) -> bool:
    real = path.resolve()
    return real == base or base in real.parents


# ------------------------------------------------------------------------------------------- uploads
def safe_name(name: str) -> str:
    """The base name of an uploaded file, reduced to letters, digits, dot, dash and underscore (a client may
    send any string as a file name, '../../x' included)."""
    base = re.split(r"[\\/]", str(name or ""))[-1]
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")
    return base[:120] or "upload"


def upload_kind(name: str) -> str:
    """'volume' or 'zip' from the file name; anything else is refused with the formats the app reads."""
    lower = (name or "").lower()
    if lower.endswith(VOLUME_SUFFIXES):
        return "volume"
    if lower.endswith(ZIP_SUFFIXES):
        return "zip"
    raise ContrastSegError(f"'{safe_name(name)}' is not a CT file the app reads: upload a NIfTI (.nii, .nii.gz), NRRD "
                           "or MHA volume, or a .zip holding one DICOM series")


def check_upload_size(size: int | None, limit_mb: float) -> None:
    """Refuse an upload over the limit (`--max-upload-mb`) or an empty one, before it is written anywhere."""
    size = int(size or 0)
    if size <= 0:
        raise ContrastSegError("the uploaded file is empty")
    if size > limit_mb * 1024 * 1024:
        raise ContrastSegError(f"the upload is {size / 1024 / 1024:.0f} MB; this app accepts at most {limit_mb:.0f} MB "
                               "per file (the operator sets it with --max-upload-mb)")


def extract_zip(path: Path, dest: Path, limit_mb: float) -> Path:
    """Unpack a zipped DICOM series into `dest` and return the folder holding the series.

    Why the limits: a zip names its own paths (`../` or absolute ones would write outside `dest`), can hold
    links, and can expand a thousandfold (a zip bomb). Members are written under `dest` by base name only;
    links and special files are skipped; the total may not pass the upload limit's ratio."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise ContrastSegError(f"the upload is not a readable zip file ({err})") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if not members:
            raise ContrastSegError("the zip file is empty; zip the folder of one DICOM series")
        if len(members) > MAX_ZIP_MEMBERS:
            raise ContrastSegError(f"the zip holds {len(members)} files; at most {MAX_ZIP_MEMBERS} are read (one DICOM series)")
        total = sum(m.file_size for m in members)
        packed = max(1, sum(m.compress_size for m in members))
        if total > limit_mb * 1024 * 1024 * 4 or total / packed > MAX_ZIP_RATIO:
            raise ContrastSegError(f"the zip would unpack to {total / 1024 / 1024:.0f} MB from {packed / 1024 / 1024:.1f} MB; "
                                   "that is not a DICOM series this app reads")
        folder = dest / "series"
        folder.mkdir(parents=True, exist_ok=True)
        written: set[str] = set()
        for m in members:
            mode = (m.external_attr >> 16) & 0o170000
            if mode and not stat.S_ISREG(mode):
                continue  # a symlink or device stored in the zip
            name = safe_name(m.filename)
            if name in written or name.lower() in ("dicomdir",) or m.filename.startswith("__MACOSX"):
                continue
            with archive.open(m) as src, open(folder / name, "wb") as out:
                left = m.file_size + 1
                while chunk := src.read(1 << 20):
                    left -= len(chunk)
                    if left < 0:
                        raise ContrastSegError("a file in the zip is larger than the zip says; it was not read")
                    out.write(chunk)
            written.add(name)
    if not written:
        raise ContrastSegError("the zip holds no regular files; zip the folder of one DICOM series")
    return folder
