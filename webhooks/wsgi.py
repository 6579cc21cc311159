"""WSGI entry point for gunicorn: ``gunicorn webhooks.wsgi:app`` (settings from DUCC_* variables)."""

from webhooks import create_app

app = create_app()
