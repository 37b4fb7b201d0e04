"""The service's request handlers: feature reads, admin operations, operational endpoints."""
