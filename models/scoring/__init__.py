"""Scoring: calibration of readings and scores per device, window scores, the anomaly
decision. numpy only: the daemon and ``model score/eval`` run this same code."""
