"""Pydantic models: the API's shape. They never import the ORM models."""
