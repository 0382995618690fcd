"""Name resolution while connected: the file written, the namespace found, and the exact undo."""

from __future__ import annotations

from pathlib import Path

import pytest

from wardgate.client.errors import ClientError
from wardgate.client.resolver import MARKER, current_netns, resolv_conf_text, restore, write_resolv_conf


@pytest.mark.parametrize(
    ("previous", "expected"),
    [
        (None, [MARKER, "nameserver 100.64.0.1"]),
        (
            "# from DHCP\nnameserver 192.0.2.53\nsearch corp.example\noptions edns0\n",
            [MARKER, "nameserver 100.64.0.1", "nameserver 192.0.2.53", "search corp.example", "options edns0"],
        ),
        (
            "nameserver 192.0.2.1\nnameserver 192.0.2.2\nnameserver 192.0.2.3\nnameserver 100.64.0.1\n",
            [MARKER, "nameserver 100.64.0.1", "nameserver 192.0.2.1", "nameserver 192.0.2.2"],
        ),
    ],
)
def test_the_node_comes_first_then_what_was_there(previous: str | None, expected: list[str]) -> None:
    assert resolv_conf_text("100.64.0.1", previous).splitlines() == expected


@pytest.mark.parametrize("previous", [None, "nameserver 192.0.2.53\n"])
def test_write_then_restore_puts_back_exactly_the_previous_state(tmp_path: Path, previous: str | None) -> None:
    path = tmp_path / "netns" / "resolv.conf"
    if previous is not None:
        path.parent.mkdir()
        path.write_text(previous)
    change = write_resolv_conf("netns", path, "100.64.0.1")
    assert path.read_text().startswith(MARKER)
    with pytest.raises(ClientError, match="another `wardgate connect`"):
        write_resolv_conf("netns", path, "100.64.0.1")
    assert restore(change) is None
    if previous is None:
        assert not path.exists() and not path.parent.exists()
    else:
        assert path.read_text() == previous


def test_a_file_changed_since_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    change = write_resolv_conf("resolv-conf", path, "100.64.0.1")
    path.write_text("nameserver 192.0.2.9\n")
    assert "left as it is" in (restore(change) or "")
    assert path.read_text() == "nameserver 192.0.2.9\n"


def test_the_namespace_is_found_by_inode(tmp_path: Path) -> None:
    (tmp_path / "other").write_text("")
    (tmp_path / "mine").write_text("")
    assert current_netns(tmp_path, own=tmp_path / "mine") == "mine"
    assert current_netns(tmp_path, own=tmp_path / "missing") is None
    assert current_netns(tmp_path / "nowhere", own=tmp_path / "mine") is None
