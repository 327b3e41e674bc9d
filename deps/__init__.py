"""The project's environment: its direct dependencies (pyproject.toml) and their exact pins (requirements*.lock)."""
