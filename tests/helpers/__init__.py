"""Shared test utilities of the Lightning-spine tests."""
