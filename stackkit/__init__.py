"""The kit's own tooling: local test hosts, vault maker, inventory resolver, the drift, chaos and
bench drivers, and the lint checks `make lint` runs. Each module with a CLI runs as
`python -m stackkit.MODULE`; they work on the checkout they are installed from (`pip install -e .`,
what `make bootstrap` does)."""
