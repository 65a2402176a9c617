"""Infrastructure with no HTTP: security, imaging, mail, media storage, logging, metrics."""
