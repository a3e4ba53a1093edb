"""The bodies of the scripts in scripts/ (each also a uer-* console command: see pyproject.toml)."""
