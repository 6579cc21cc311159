"""WSGI entry point for gunicorn: ``gunicorn ducc.web.wsgi:app`` (settings from DUCC_* variables).

The app logs what it did with every request (accepted, coalesced, ignored and why) at ``DUCC_LOG_LEVEL``.
"""

from ducc.logs import setup_logging
from ducc.settings import Settings
from ducc.web import create_app

settings = Settings.from_env()
setup_logging(settings.log_level)
app = create_app(settings)
