"""Whole experiments built from the stages: the quickstart and the protection comparison."""
