"""The web app's gate without a server or a browser: binding and token rules, path confinement, upload and zip
checks, the HTTP gate's decisions, and the CLI refusing an open address without a token.

contrastseg_web.guard and .auth are plain Python (no trame, no Slicer), so these run in every environment.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from contrastseg.errors import ContrastSegError
from contrastseg_web import auth, guard
from realdata import DATA, IRCAD, TS, needs_data

TOKEN = "correct-horse-battery-staple"


# ------------------------------------------------------------------------------------------ binding and token
@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_addresses_need_no_token(host):
    assert guard.is_loopback(host)
    guard.check_bind(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.5", "ct-server.example.org", ""])
def test_any_other_address_refuses_to_start_without_a_token(host):
    assert not guard.is_loopback(host)
    with pytest.raises(ContrastSegError, match="give --token"):
        guard.check_bind(host, None)
    guard.check_bind(host, TOKEN)


def test_a_short_token_is_refused_with_how_to_make_one():
    with pytest.raises(ContrastSegError, match="at least 12.*secrets"):
        guard.check_bind("0.0.0.0", "abc")


def test_token_comes_from_the_option_else_the_environment():
    assert guard.resolve_token(None, {guard.TOKEN_ENV: " from-env-token "}) == "from-env-token"
    assert guard.resolve_token("given-token-x", {guard.TOKEN_ENV: "from-env-token"}) == "given-token-x"
    assert guard.resolve_token(None, {}) is None
    assert guard.resolve_token("", {guard.TOKEN_ENV: "x"}) is None  # an explicit empty option means none


def test_token_matches_only_the_token():
    assert guard.token_matches(TOKEN, TOKEN)
    assert not guard.token_matches(TOKEN + "x", TOKEN)
    assert not guard.token_matches("", TOKEN)
    assert not guard.token_matches(None, TOKEN)
    assert guard.token_matches(None, None)  # no token configured: loopback only, nothing to match


def test_cli_refuses_an_open_address_without_a_token_in_one_sentence():
    env = {k: v for k, v in os.environ.items() if k != guard.TOKEN_ENV}
    proc = subprocess.run([sys.executable, "-m", "contrastseg.cli", "web", "--host", "0.0.0.0", "--port", "0"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("contrastseg web: error: listening on 0.0.0.0 lets other computers")
    assert len(proc.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------ the HTTP gate
def decide(token=TOKEN, method="GET", path="/", host="127.0.0.1:8080", origin=None, cookie=None, bearer=None,
           query=None, ws=False):
    return auth.decide(token, method, path, host, origin, cookie, bearer, query, ws)


def test_gate_with_a_token():
    assert decide()[0] == "login"  # no credentials: the page asks for the token
    assert decide(path="/ws", ws=True)[0] == "login"
    assert decide(cookie=auth.cookie_value(TOKEN)) == ("allow", "")
    assert decide(cookie=auth.cookie_value("another-token-entirely"))[0] == "login"
    assert decide(cookie=TOKEN)[0] == "login"  # the cookie holds a digest, never the token
    assert decide(bearer=TOKEN) == ("allow", "")
    assert decide(bearer="wrong")[0] == "login"
    assert decide(query=TOKEN)[0] == "redirect"  # sets the cookie, drops the token from the address
    assert decide(query="wrong") == ("login", "That token is not right.")
    assert decide(method="POST", path="/login")[0] == "check-form"


def test_gate_refuses_a_websocket_from_another_site_even_with_the_cookie():
    cookie = auth.cookie_value(TOKEN)
    assert decide(path="/ws", ws=True, origin="http://127.0.0.1:8080", cookie=cookie) == ("allow", "")
    assert decide(path="/ws", ws=True, origin="https://evil.example", cookie=cookie)[0] == "forbid"
    assert decide(token=None, path="/ws", ws=True, origin="http://localhost:9999", host="localhost:8080")[0] == "forbid"


def test_gate_without_a_token_answers_only_loopback_host_names():
    assert decide(token=None, host="127.0.0.1:8080") == ("allow", "")
    assert decide(token=None, host="localhost:8080") == ("allow", "")
    assert decide(token=None, host="[::1]:8080") == ("allow", "")
    verdict, why = decide(token=None, host="rebound.example.com:8080")
    assert verdict == "forbid" and "rebound.example.com" in why


def test_login_page_escapes_its_message_and_loads_nothing_from_outside():
    page = auth.login_page("<script>alert(1)</script>")
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "http" not in page.lower().replace('charset="utf-8"', "")


# ------------------------------------------------------------------------------------------ paths
def test_confined_names_stay_inside_the_data_folder(tmp_path):
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "ct.nii.gz").write_bytes(b"x")
    (tmp_path / "secret.nii.gz").write_bytes(b"x")
    (root / "leak.nii.gz").symlink_to(tmp_path / "secret.nii.gz")
    assert guard.confined("sub/ct.nii.gz", root) == (root / "sub" / "ct.nii.gz").resolve()
    for bad in ["../secret.nii.gz", "sub/../../secret.nii.gz", str(tmp_path / "secret.nii.gz"), "/etc/passwd",
                "leak.nii.gz"]:
        with pytest.raises(ContrastSegError, match="outside the allowed folder"):
            guard.confined(bad, root)
    with pytest.raises(ContrastSegError, match="does not exist"):
        guard.confined("sub/gone.nii.gz", root)
    with pytest.raises(ContrastSegError, match="--data-dir"):
        guard.confined("sub/ct.nii.gz", None)
    assert "leak.nii.gz" not in guard.list_data_files(root)  # a link leading out is not even offered
    assert guard.list_data_files(root) == ["sub/ct.nii.gz"]


@needs_data
def test_data_files_lists_images_and_dicom_folders_of_the_shared_data():
    files = guard.list_data_files(DATA)
    assert "totalsegmentator-examples/example_ct.nii.gz" in files
    assert "totalsegmentator-examples/example_ct_dicom" in files
    if IRCAD.exists():
        assert "ircad-3d-01-patient1/PATIENT_DICOM" in files
        assert "ircad-3d-01-patient1/MASKS_DICOM.zip" in files  # a zip is offered; reading it decides the rest
    assert all(not Path(f).is_absolute() and ".." not in Path(f).parts for f in files)


# ------------------------------------------------------------------------------------------ uploads
def test_upload_names_kinds_and_sizes():
    assert guard.safe_name("../../etc/passwd") == "passwd"
    assert guard.safe_name("C:\\Users\\me\\ct scan.nii.gz") == "ct_scan.nii.gz"
    assert guard.safe_name("..") == "upload" and guard.safe_name("") == "upload"
    assert guard.upload_kind("CT.NII.GZ") == "volume" and guard.upload_kind("series.zip") == "zip"
    with pytest.raises(ContrastSegError, match="not a CT file the app reads"):
        guard.upload_kind("photo.png")
    guard.check_upload_size(10 * 1024 * 1024, 10)
    with pytest.raises(ContrastSegError, match="at most 10 MB"):
        guard.check_upload_size(10 * 1024 * 1024 + 1, 10)
    with pytest.raises(ContrastSegError, match="empty"):
        guard.check_upload_size(0, 10)


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buffer.getvalue()


def test_zip_members_land_inside_the_destination_by_base_name(tmp_path):
    archive = tmp_path / "up.zip"
    archive.write_bytes(_zip({"../../escape.dcm": b"a" * 10, "/abs/slice2.dcm": b"b" * 10, "series/slice3.dcm": b"c",
                              "__MACOSX/._slice3.dcm": b"junk"}))
    folder = guard.extract_zip(archive, tmp_path / "out", limit_mb=10)
    assert sorted(p.name for p in folder.iterdir()) == ["escape.dcm", "slice2.dcm", "slice3.dcm"]
    assert not (tmp_path / "escape.dcm").exists() and folder.parent == tmp_path / "out"


def test_zip_bombs_and_non_zips_are_refused(tmp_path):
    bomb = tmp_path / "bomb.zip"
    bomb.write_bytes(_zip({"zeros.dcm": bytes(50 * 1024 * 1024)}))
    with pytest.raises(ContrastSegError, match="would unpack to 50 MB"):
        guard.extract_zip(bomb, tmp_path / "out", limit_mb=100)
    not_zip = tmp_path / "fake.zip"
    not_zip.write_bytes(b"not a zip at all")
    with pytest.raises(ContrastSegError, match="not a readable zip"):
        guard.extract_zip(not_zip, tmp_path / "out2", limit_mb=100)
    empty = tmp_path / "empty.zip"
    empty.write_bytes(_zip({}))
    with pytest.raises(ContrastSegError, match="empty"):
        guard.extract_zip(empty, tmp_path / "out3", limit_mb=100)


@needs_data
def test_a_zipped_real_dicom_series_unpacks_to_a_readable_series(tmp_path):
    from contrastseg.io import read_ct

    series = TS / "example_ct_dicom"
    archive = tmp_path / "dicom.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(series.iterdir()):
            z.write(f, f"study/{f.name}")
    image = read_ct(guard.extract_zip(archive, tmp_path / "out", limit_mb=100))
    assert image.GetSize() == (512, 512, len(list(series.iterdir())))
