"""Static checks `make lint` runs besides yamllint, ansible-lint and ruff."""
