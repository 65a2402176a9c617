"""One APIRouter per resource; `app.main` mounts them."""
