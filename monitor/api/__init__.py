"""The read-only history API under /api/v1/: routes, parameters, access control, OpenAPI."""
