"""The command line (`python -m app …`) and the seed data it writes."""
