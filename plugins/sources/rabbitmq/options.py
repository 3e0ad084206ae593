"""Options of the ``rabbitmq`` source (one ``[[sources]]`` table with ``type = "rabbitmq"``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.broker.options import read_secret
from gateway.cluster.topology import SNAPSHOT_KEEP, UPLINK_BINDING


class RabbitSourceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = Field("127.0.0.1", description="RabbitMQ host name or address.")
    port: int = Field(5672, ge=1, le=65535, description="AMQP port.")
    vhost: str = Field("/", description="Virtual host.")
    username: str = Field("guest", description="User name.")
    password_env: str | None = Field(None, description="Environment variable holding the password.")
    password_file: Path | None = Field(None, description="File holding the password (first line).")
    worker_id: str | None = Field(
        None, description="This worker's name in the cluster (unique per worker); default: the gateway id and the process id.")
    prefix: str = Field("lora", description="Name prefix of the cluster's exchanges and queues (as given to `cluster init`).")
    partitions: int = Field(16, ge=1, le=1000, description="Number of partition queues (as given to `cluster init`).")
    source_exchange: str = Field("amq.topic", description="Exchange the network server publishes uplinks to.")
    binding_key: str = Field(UPLINK_BINDING, description="Routing-key pattern of uplinks on the source exchange.")
    shape: str = Field("chirpstack_v4", description="Uplink shape of the message bodies (as for the mqtt source).")
    prefetch: int = Field(500, ge=2, le=65535, description="Unacknowledged uplinks per partition (basic.qos).")
    checkpoint_every: int = Field(200, ge=1, description="Snapshot a partition (and ack its uplinks) after this many uplinks...")
    checkpoint_interval_s: float = Field(1.0, gt=0, description="...or this long after the first uplink not yet acknowledged.")
    full_snapshot_every: int = Field(
        16, ge=1, le=SNAPSHOT_KEEP // 2,
        description="Every this many checkpoints a partition's snapshot holds all its devices; "
        "the others hold the devices that took uplinks since the previous one.")
    duplicate_window: int = Field(
        1024, ge=1, description="A redelivered uplink whose fCnt is this close below the device's last one is a duplicate.")
    heartbeat_s: int = Field(10, ge=1, description="AMQP heartbeat (how fast the broker notices a dead worker's silent link).")
    member_heartbeat_s: float = Field(0.5, gt=0, description="How often a worker announces itself to the others.")
    member_timeout_s: float = Field(3.0, gt=0, description="A worker unheard for this long is gone: its partitions are reassigned.")
    settle_s: float = Field(1.5, ge=0, description="Listen for the other workers this long after connecting before claiming partitions.")
    release_timeout_s: float = Field(5.0, gt=0, description="At a clean stop, wait this long for the final snapshots.")
    max_payload_bytes: int = Field(65536, ge=256, description="Larger messages are rejected (reason too_large).")
    reconnect_min_s: float = Field(1.0, gt=0, description="First reconnect delay.")
    reconnect_max_s: float = Field(30.0, gt=0, description="Reconnect back-off cap.")

    @model_validator(mode="after")
    def _consistent(self) -> RabbitSourceOptions:
        if self.checkpoint_every >= self.prefetch:
            raise ValueError(f"checkpoint_every ({self.checkpoint_every}) must be below prefetch ({self.prefetch}): "
                             "uplinks are acknowledged only at checkpoints")
        if self.member_timeout_s <= 2 * self.member_heartbeat_s:
            raise ValueError("member_timeout_s must exceed two member heartbeats")
        return self

    def password(self) -> str:
        """The password from ``password_env`` / ``password_file``; RabbitMQ's default user
        ``guest`` gets its default password when neither is set."""
        secret = read_secret(self.password_env, self.password_file)
        if secret is not None:
            return secret
        return "guest" if self.username == "guest" else ""
