"""One ``APIRouter`` per resource: the service (health, metrics), the model, predictions, and the page."""
