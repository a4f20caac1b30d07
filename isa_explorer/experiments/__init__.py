"""Experiments whose results the project reports (scripts + library functions)."""
