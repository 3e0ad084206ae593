"""Alerts: the policy that turns scores and readings into raise/clear events, the durable
outbox they go to first, the dispatcher that delivers them to handlers, and telemetry."""
