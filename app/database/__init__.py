from app.database.base import Base
from app.database.session import create_engine, create_session_factory

__all__ = ["Base", "create_engine", "create_session_factory"]
