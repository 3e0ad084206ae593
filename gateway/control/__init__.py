"""Operator control of the running daemon: model activation over the MQTT command topic."""
