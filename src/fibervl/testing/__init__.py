"""Helpers for tests that compare fibervl against the official FIBER fixtures."""
