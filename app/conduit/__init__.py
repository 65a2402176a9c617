"""The RealWorld ("Conduit") API, served at /conduit: its own routes and schemas over the same
services and data as /api, with RealWorld's error shape and token scheme."""

from app.conduit.app import CONDUIT_PATH, create_conduit_app, mount_conduit

__all__ = ["CONDUIT_PATH", "create_conduit_app", "mount_conduit"]
