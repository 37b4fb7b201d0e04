"""hearth package."""
