"""Test project's node implementations (copied into a temporary project root by tests/test_contracts.py)."""
