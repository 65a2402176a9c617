"""Background jobs (image processing, e-mail): the jobs, their runners and the Celery app."""
