"""The benches: converge time per strategy, the app through nginx, deploys under load."""
