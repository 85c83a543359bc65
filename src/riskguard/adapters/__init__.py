"""Implementations of riskguard.ports (memory, sql, redis) and the HTTP adapter."""
