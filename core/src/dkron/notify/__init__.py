"""Notifications: e-mail to a job's ``owner_email`` and pre/post-run webhooks (see ``notifier.py``)."""
