"""The desktop's display and X cookie as a viewer outside the session needs them; checked
against the real xauth tool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cloudify import desktop
from kod import errors


@pytest.mark.parametrize(("value", "number", "local"), [(":0", 0, ":0"), (":12.1", 12, ":12.1"), ("unix:3", 3, ":3"), ("host/unix:4", 4, ":4")])
def test_local_displays_are_understood(value: str, number: int, local: str) -> None:
    d = desktop.parse_display(value)
    assert (d.number, d.local_name, str(d.socket)) == (number, local, f"/tmp/.X11-unix/X{number}")


@pytest.mark.parametrize("value", ["localhost:10.0", "example.org:0", "", None])
def test_remote_or_missing_displays_are_refused(value: str | None) -> None:
    with pytest.raises(errors.InvalidInput):
        desktop.parse_display(value)


@pytest.mark.skipif(not shutil.which("xauth"), reason="needs xauth (x11-xserver-utils)")
def test_the_cookie_becomes_familywild_like_xauth_nlist_sed(tmp_path: Path) -> None:
    src = tmp_path / "Xauthority"
    cookie = "00112233445566778899aabbccddeeff"
    subprocess.run(["xauth", "-f", str(src), "add", "myhost/unix:7", "MIT-MAGIC-COOKIE-1", cookie], check=True)
    subprocess.run(["xauth", "-f", str(src), "add", "myhost/unix:8", "MIT-MAGIC-COOKIE-1", "ff" * 16], check=True)
    wild = desktop.wild_cookie(src, desktop.parse_display(":7"))
    assert wild is not None
    out = tmp_path / "wild"
    out.write_bytes(wild)
    listing = subprocess.run(["xauth", "-f", str(out), "nlist"], check=True, capture_output=True, text=True).stdout
    # FamilyWild (ffff), no address, display 7, the cookie; display 8's cookie is not there.
    assert listing.split() == ["ffff", "0000", "0001", "37", "0012", "4d49542d4d414749432d434f4f4b49452d31", "0010", cookie]
    assert desktop.wild_cookie(src, desktop.parse_display(":9")) is None
    assert desktop.wild_cookie(tmp_path / "missing", desktop.parse_display(":7")) is None


def test_a_damaged_authority_file_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x00\x00\x05ab")
    with pytest.raises(errors.InvalidInput, match="damaged"):
        desktop.wild_cookie(bad, desktop.parse_display(":0"))
