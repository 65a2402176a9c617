"""E-mail: messages from templates, sent over SMTP or written to the outbox in development."""

from __future__ import annotations

import logging
import smtplib
import ssl
import uuid
from email.message import EmailMessage
from email.utils import make_msgid
from html import escape
from pathlib import Path
from string import Template
from typing import Protocol

import anyio.to_thread

from app.config import Settings

logger = logging.getLogger(__name__)
TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "email"


def render(template: str, to: str, subject: str, sender: str, **values: str) -> EmailMessage:
    """A text and HTML message from `templates/email/<template>.{txt,html}`."""
    text = Template((TEMPLATES / f"{template}.txt").read_text()).substitute(values)
    html = Template((TEMPLATES / f"{template}.html").read_text()).substitute(
        {k: escape(v) for k, v in values.items()}
    )
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = sender
    message["To"] = to
    message["Message-ID"] = make_msgid(domain="inkwell.local")
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


class Mailer(Protocol):
    async def send(self, message: EmailMessage) -> None: ...


class SmtpMailer:
    """Sends over SMTP in a worker thread; errors propagate so the task can retry."""

    def __init__(self, settings: Settings) -> None:
        assert settings.smtp_host, "only built when SMTP_HOST is set"
        self._host = settings.smtp_host
        self._port = settings.smtp_port
        self._user = settings.smtp_user
        self._password = settings.smtp_password
        self._starttls = settings.smtp_starttls
        self._timeout = settings.smtp_timeout_seconds

    async def send(self, message: EmailMessage) -> None:
        await anyio.to_thread.run_sync(self._send, message)
        logger.info("e-mail sent", extra={"subject": message["Subject"]})

    def _send(self, message: EmailMessage) -> None:
        with smtplib.SMTP(self._host, self._port, timeout=self._timeout) as smtp:
            if self._starttls:
                smtp.starttls(context=ssl.create_default_context())
            if self._user and self._password:
                smtp.login(self._user, self._password.get_secret_value())
            smtp.send_message(message)


class OutboxMailer:
    """Development: each message becomes an `.eml` file under DATA_DIR/outbox, and a log line."""

    def __init__(self, settings: Settings) -> None:
        self._outbox = settings.outbox_path

    async def send(self, message: EmailMessage) -> None:
        path = self._outbox / f"{uuid.uuid4().hex}.eml"
        await anyio.to_thread.run_sync(self._write, path, message)
        logger.info(
            "e-mail written to the outbox",
            extra={"to": message["To"], "subject": message["Subject"], "path": str(path)},
        )

    def _write(self, path: Path, message: EmailMessage) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(message.as_bytes())


def build_mailer(settings: Settings) -> Mailer:
    return SmtpMailer(settings) if settings.smtp_host else OutboxMailer(settings)
