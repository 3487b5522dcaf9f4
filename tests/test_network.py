"""Ray's exposure: the local Ray of a study listens on loopback only (README, "On a Ray cluster")."""

import ipaddress

import pytest


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback  # '::ffff:127.0.0.1' too


def test_is_loopback():
    assert all(map(is_loopback, ["127.0.0.1", "::1", "::ffff:127.0.0.1"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.0.2.2", "::ffff:192.0.2.2", "fd00::2"]))


@pytest.mark.slow
def test_local_study_listens_on_loopback_only(real_study):
    """Every listening socket of a running `python -m vaesweep run` and all its Ray processes
    (driver, GCS, raylet, runtime-env agent, workers) is on 127.0.0.1."""
    assert real_study.returncode == 0, real_study.printed
    names = {name for name, _, _ in real_study.listening}
    # the study's Ray was seen running, servers and trial workers alike: the check below is not empty
    assert {"gcs_server", "raylet"} <= names, names
    assert "ray::RuntimeEnvAgent" in names, names
    assert {n for n in names if n.startswith("ray::")} - {"ray::IDLE", "ray::RuntimeEnvAgent"}, names
    exposed = sorted(s for s in real_study.listening if not is_loopback(s[1]))
    assert not exposed, f"listening beyond loopback (process, address, port): {exposed}"
