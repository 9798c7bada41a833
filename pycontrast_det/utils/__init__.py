"""Shared utilities below every layer that trains or evaluates: process-group helpers and run events."""
