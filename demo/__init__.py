"""The CPU demo: synthetic data, the tiny model zoo, demo-only metrics and the end-to-end demo run."""
