"""``smegctl dns-help`` as a real subprocess (from tests/unit/test_dns_server.py)."""

from __future__ import annotations


def test_dns_help_json_and_bad_listen() -> None:
    import json
    import subprocess
    import sys

    argv = [sys.executable, "-m", "smegmesh.cli.main", "dns-help", "--listen", "[::1]:5300"]
    out = subprocess.run([*argv, "--json"], capture_output=True, text=True, check=True).stdout
    got = json.loads(out)
    assert got["listen"] == "[::1]:5300" and got["domains"] == ["smeg", "d.f.ip6.arpa"]
    assert "resolvectl dns IFACE [::1]:5300" in got["resolvectl"]
    assert "DNS=[::1]:5300" in got["resolved_conf"]
    assert "server=/smeg/::1#5300" in got["dnsmasq_conf"]
    assert "stub-addr: ::1@5300" in got["unbound_conf"]
    bad = subprocess.run([*argv[:-1], "nonsense:xx"], capture_output=True, text=True)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().startswith("smegctl: --listen:") and len(bad.stderr.splitlines()) == 1
