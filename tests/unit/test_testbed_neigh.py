"""The test bed makes room in the host's IPv6 neighbour table (``testbed/netns.py``)."""

from __future__ import annotations

from pathlib import Path

from smegmesh.testbed.netns import NEIGH_ROOM, ensure_neighbour_room


def _limits(tmp_path: Path, **values: str) -> str:
    for name, value in values.items():
        (tmp_path / name).write_text(value + "\n")
    return str(tmp_path / "gc_thresh{}")


def test_the_limits_are_raised_thresh3_first_and_never_lowered(tmp_path: Path) -> None:
    fmt = _limits(tmp_path, gc_thresh2="512", gc_thresh3="1024")
    said = ensure_neighbour_room(fmt)
    assert said == [
        f"raised {tmp_path}/gc_thresh3 from 1024 to 65536",
        f"raised {tmp_path}/gc_thresh2 from 512 to 32768",
    ]
    assert dict(NEIGH_ROOM) == {3: 65_536, 2: 32_768}
    assert (tmp_path / "gc_thresh3").read_text() == "65536"
    # a host set higher keeps its values, and nothing is said
    (tmp_path / "gc_thresh3").write_text("100000\n")
    assert ensure_neighbour_room(fmt) == []
    assert (tmp_path / "gc_thresh3").read_text() == "100000\n"


def test_a_limit_that_cannot_be_read_is_reported_not_raised(tmp_path: Path) -> None:
    fmt = _limits(tmp_path, gc_thresh2="512")  # no gc_thresh3 (not the init namespace)
    said = ensure_neighbour_room(fmt)
    assert len(said) == 2 and said[0].startswith(f"cannot raise {tmp_path}/gc_thresh3 to 65536:")
    assert said[1] == f"raised {tmp_path}/gc_thresh2 from 512 to 32768"
