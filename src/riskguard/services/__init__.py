"""Use cases: each owns its unit of work and talks to the outside only through riskguard.ports."""
