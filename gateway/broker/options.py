"""MQTT connection settings shared by the MQTT source and the MQTT-based alert handlers.

TLS certificate checks are on by default; passwords come from an environment variable or
a file, never from the config file itself.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Literal

from paho.mqtt import client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import BaseModel, ConfigDict, Field

# CONNACK reason codes meaning "your credentials are wrong": retrying cannot help.
AUTH_FAILURE_CODES = {4, 5, 134, 135}


class TlsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ca_file: Path | None = Field(None, description="CA bundle that signs the broker's certificate; unset uses the system store.")
    cert_file: Path | None = Field(None, description="Client certificate (PEM) for mutual TLS.")
    key_file: Path | None = Field(None, description="Client private key (PEM) for mutual TLS.")
    insecure_skip_verify: bool = Field(False, description="Disable certificate and host name checks (testing only).")


class BrokerOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = Field("127.0.0.1", description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 for TLS usually).")
    protocol: Literal["5", "3.1.1"] = Field("5", description="MQTT protocol version.")
    client_id: str | None = Field(None, description="Client id; must be stable for a persistent session. Default: derived from the gateway id and instance name.")
    username: str | None = Field(None, description="User name.")
    password_env: str | None = Field(None, description="Environment variable holding the password.")
    password_file: Path | None = Field(None, description="File holding the password (first line).")
    keepalive_s: int = Field(30, ge=5, description="MQTT keep-alive interval.")
    tls: TlsOptions | None = Field(None, description="TLS settings; unset means plain TCP.")
    reconnect_min_s: float = Field(1.0, gt=0, description="First reconnect delay.")
    reconnect_max_s: float = Field(30.0, gt=0, description="Reconnect back-off cap.")


class _ClosingSSLSocket(ssl.SSLSocket):
    """An SSLSocket that closes itself when the TLS handshake fails.

    paho 2.2 leaves the socket of a failed handshake (e.g. an untrusted certificate) open,
    leaking one file descriptor per reconnect attempt.
    """

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except BaseException:
            self.close()
            raise


def tls_context(tls: TlsOptions) -> ssl.SSLContext:
    """Client TLS context: certificate and host name checks on unless ``insecure_skip_verify``."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                     cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    if tls.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.sslsocket_class = _ClosingSSLSocket
    return ctx


def read_secret(env_name: str | None, file: Path | None) -> str | None:
    """A secret named by a ``*_env`` / ``*_file`` option pair: the environment variable's
    value, else the file's first line (stripped; "" for an empty file), else None when
    neither is set. ValueError with a one-line reason for an unset variable or an
    unreadable file. Shared by every broker client (MQTT and RabbitMQ)."""
    if env_name:
        value = os.environ.get(env_name)
        if value is None:
            raise ValueError(f"environment variable {env_name} (password_env) is not set")
        return value
    if file:
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ValueError(f"password_file {file}: {exc.strerror or exc}") from exc
        return lines[0].strip() if lines else ""
    return None


def read_password(opts: BrokerOptions) -> str | None:
    """The broker password from the environment or a file (None when neither is set)."""
    return read_secret(opts.password_env, opts.password_file)


def make_client(opts: BrokerOptions, client_id: str, persistent: bool, *,
                client_class: type[mqtt.Client] = mqtt.Client) -> mqtt.Client:
    """A paho 2.x client configured with protocol, credentials, TLS and back-off (not connected).

    ``client_class`` lets a subscriber taking many messages use a paho subclass (the MQTT
    source's batched receive client); it must take paho's constructor arguments.
    """
    v5 = opts.protocol == "5"
    client = client_class(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else not persistent,
    )
    if opts.username:
        client.username_pw_set(opts.username, read_password(opts))
    if opts.tls is not None:
        client.tls_set_context(tls_context(opts.tls))
        if opts.tls.insecure_skip_verify:
            client.tls_insecure_set(True)
    client.reconnect_delay_set(min_delay=max(1, int(opts.reconnect_min_s)), max_delay=max(1, int(opts.reconnect_max_s)))
    return client


def connect_properties(opts: BrokerOptions, session_expiry_s: int) -> object | None:
    """CONNECT properties for MQTT v5 (session expiry), None for 3.1.1."""
    if opts.protocol != "5":
        return None
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = session_expiry_s
    return props
