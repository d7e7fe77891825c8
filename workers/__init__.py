"""Celery app and the study task chain that runs models and delivers reports."""

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())
