"""TLS: amqps:// with certificate verification, against a listener made for the test.

The test makes its own CA and server certificate with openssl, and starts a TLS
listener on the running broker at run time (no restart, no config change); it
is stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from leveret import AsyncPublisher, Publisher, connection
from leveret.errors import BrokerUnavailable, ConfigurationError
from tests.apps import Task
from tests.conftest import Pipeline, rabbitmqctl, with_login

ROOT = Path(__file__).resolve().parent.parent


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> None:
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.pem",
        cwd=directory,
    )


@pytest.fixture(scope="module")
def tls(broker_url: str) -> Iterator[tuple[int, Path]]:
    """A TLS listener on 127.0.0.1, signed by a CA made here: (port, directory)."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test CA")
    # Readable by the broker's own user: pytest's tmp_path is private to root.
    directory = Path(tempfile.mkdtemp(prefix="leveret-tls-"))
    directory.chmod(0o755)
    make_ca(directory, "ca")
    make_ca(directory, "wrong-ca")
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        cwd=directory,
    )
    (directory / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
        cwd=directory,
    )
    for f in directory.iterdir():
        f.chmod(0o644)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rabbitmqctl(
        "eval",
        (
            f'rabbit_networking:start_ssl_listener({{"127.0.0.1", {port}}}, '
            f'[{{cacertfile, "{directory}/ca.pem"}}, {{certfile, "{directory}/server.pem"}}, '
            f'{{keyfile, "{directory}/server.key"}}, {{verify, verify_none}}], 1, 1).'
        ),
    )
    try:
        yield port, directory
    finally:
        rabbitmqctl("eval", f'rabbit_networking:stop_tcp_listener({{"127.0.0.1", {port}}}).')
        shutil.rmtree(directory, ignore_errors=True)


def tls_url(port: int, ca: Path) -> str:
    return with_login(f"amqps://localhost:{port}/?cafile={ca}")


def test_publish_and_consume_over_verified_tls(tls: tuple[int, Path], pipeline: Pipeline) -> None:
    port, directory = tls
    url = tls_url(port, directory / "ca.pem")
    with Publisher(url) as pub:
        message_id = pub.publish(Task(n=1), exchange=pipeline.exchange)
    props, _ = pipeline.get(pipeline.queue)  # type: ignore[misc]
    assert props.message_id == message_id


async def test_async_publisher_over_tls(tls: tuple[int, Path], pipeline: Pipeline) -> None:
    port, directory = tls
    async with AsyncPublisher(tls_url(port, directory / "ca.pem")) as pub:
        await pub.publish(Task(n=1), exchange=pipeline.exchange)
    assert pipeline.depth(pipeline.queue) == 1


def test_a_wrong_ca_fails_with_one_clear_line(tls: tuple[int, Path]) -> None:
    port, directory = tls
    url = tls_url(port, directory / "wrong-ca.pem")
    with pytest.raises(BrokerUnavailable, match="could not be verified") as caught:
        connection.connect(url)
    assert "guest:guest" not in str(caught.value)
    result = subprocess.run(
        [sys.executable, "-m", "leveret.cli", "queues", "--url", url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("leveret: TLS certificate of the broker at amqps://guest:***@localhost")
    assert "check cafile" in line


def test_a_missing_ca_file_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="cannot load the TLS files"):
        connection.tls_context(with_login("amqps://localhost:5671/?cafile=/nonexistent/ca.pem"))
