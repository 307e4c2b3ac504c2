"""One module per surface, each an APIRouter under its own prefix."""
