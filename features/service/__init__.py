"""The HTTP feature service (``python -m features serve``): see ``app.py`` for the assembly."""
