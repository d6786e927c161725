"""Anomaly review: detectors over the access log, alerts, and a scenario generator."""
