"""The configuration leaf: typed, validated settings and every user error. Imports pydantic and yaml only."""
