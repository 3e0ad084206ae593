"""The ``mqtt`` source plugin: its connection, the batched receive client and the uplink
wire shapes (ChirpStack v3/v4, The Things Stack v3, plain JSON)."""
