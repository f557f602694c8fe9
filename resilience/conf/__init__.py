"""Settings: loading them with dynaconf, and turning them into validated chains."""
