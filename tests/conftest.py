"""Fixtures shared by every tier live in tests/fixtures/; each tier's own stay beside its tests."""

pytest_plugins = ["fixtures.model", "fixtures.kwok", "fixtures.kind", "fixtures.helm"]
