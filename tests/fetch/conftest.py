"""Fixtures of the fetch tier: file servers (plain and https) and a fake Hugging Face Hub."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme
from fake_hub import serving_hub
from file_server import serving

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def file_server():
    with serving() as server:
        yield server


@pytest.fixture
def other_file_server():
    """A second server: another origin (port), like the CDN the Hub redirects downloads to."""
    with serving() as server:
        yield server


@pytest.fixture
def tls_ca(tmp_path) -> tuple[trustme.CA, Path]:
    """A throwaway CA, and its certificate as a PEM file for SSL_CERT_FILE."""
    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    return ca, bundle


@pytest.fixture
def https_file_server(tls_ca):
    """The file server over https, with a certificate for 127.0.0.1 that `tls_ca` signed."""
    ca, _ = tls_ca
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    with serving(context) as server:
        yield server


@pytest.fixture
def fake_hub(other_file_server):
    """A fake Hugging Face Hub on loopback (see fake_hub.py); its CDN is `other_file_server`."""
    with serving_hub(other_file_server) as hub:
        yield hub
