"""The soak harness of bench/soak.py, one concern per module (also used by tests/test_soak.py)."""
