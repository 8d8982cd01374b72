"""Helpers shared by the test-suite (real servers, loopback only)."""
