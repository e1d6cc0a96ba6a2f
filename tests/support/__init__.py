"""Test helpers shared by the unit and integration suites (fake upstreams, fixtures)."""
