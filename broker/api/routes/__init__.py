"""One router per resource; `broker.api.app` includes them."""
