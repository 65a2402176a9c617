"""The transactional outbox: a job is stored in the same transaction as the data it is about,
so a committed write never loses its job, whatever the broker does.

After the commit the job is handed to the runner at once (the fast path, bounded by
CELERY_PUBLISH_TIMEOUT_SECONDS) and marked sent. A job the broker did not take stays unsent; the
relay of every API process sends such jobs again, with backoff and jitter, once the broker
answers. Several relays share the work without sending a job twice at the same time: each claims
the jobs it sends (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite has one writer at a time) by
moving their next attempt past the time a send takes. A job may still reach the broker twice (a
send that succeeded but could not be marked): the jobs are idempotent, keyed by their task id.

A job sent whose task has not finished IMAGE_STUCK_AFTER_SECONDS later (still pending or
retrying, or held by a try whose hold is older than the hard time limit too) was lost on its way:
a broker without persistence that restarted, a retry that could not be published. The relays
sweep for such jobs and send them again, claiming them the same way; a job running or done is
left alone, and the jobs are idempotent anyway (an image is worked on while it is pending, an
e-mail is sent once: its task row holds it).

A job's arguments are stored encrypted (Fernet, with a key derived from the signing secret):
e-mail jobs carry single-use links, and the database keeps only hashes of those.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from datetime import timedelta
from typing import Any

import anyio
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.core.queue import JOB_NAMES, Job, TaskRunner
from app.database.types import utcnow
from app.models import OutboxJob, Task, TaskState
from app.tasks.runner import with_jitter
from app.web.middleware import current_request_id

logger = logging.getLogger(__name__)

RELAY_BATCH = 100
RETRY_BASE_SECONDS = 1.0
# How long a relay's claim on the jobs it is sending holds off the other relays.
CLAIM_SECONDS = 30.0
KEEP_SENT = timedelta(days=7)
PRUNE_EVERY_SECONDS = 3600.0
# The sweep for lost jobs runs this often at most (and four times per threshold at least).
SWEEP_EVERY_MAX_SECONDS = 30.0


def _sealing_key(settings: Settings) -> Fernet:
    key = HKDF(algorithm=SHA256(), length=32, salt=None, info=b"inkwell outbox").derive(
        settings.jwt_signing_key().encode()
    )
    return Fernet(base64.urlsafe_b64encode(key))


class Outbox:
    def __init__(
        self,
        settings: Settings,
        runner: TaskRunner,
        sessions: async_sessionmaker[AsyncSession],
        relay_sessions: async_sessionmaker[AsyncSession] | None = None,
    ) -> None:
        self._runner = runner
        self._fernet = _sealing_key(settings)
        self._sessions = sessions
        # The relay's own connection: its polling never mixes with the requests' statements.
        self._relay_sessions = relay_sessions or sessions
        self._publish_timeout = settings.celery_publish_timeout_seconds
        # What a send may take (kombu retries the connection for up to twice its timeout).
        self._send_timeout = 2 * self._publish_timeout + 1
        self._interval = settings.outbox_relay_interval_seconds
        self._retry_max = settings.outbox_retry_max_seconds
        self._broker_down_until = 0.0
        self._last_prune = 0.0
        self._stuck_after = settings.image_stuck_after_seconds
        self._time_limit = settings.task_time_limit_seconds
        self._sweep_every = min(SWEEP_EVERY_MAX_SECONDS, self._stuck_after / 4)
        self._last_sweep = 0.0
        self._relay: asyncio.Task[None] | None = None
        self._attempts: dict[int, int] = {}  # of the jobs claimed last

    def record(self, db: AsyncSession, task: Task, name: str, **args: Any) -> OutboxJob:
        """The job, in the caller's transaction; `dispatch` it once that commits. Until then
        (and for a short grace after) the relays leave it to the fast path."""
        grace = timedelta(seconds=self._send_timeout + self._interval)
        job = OutboxJob(
            task=task,
            name=name,
            args={"sealed": self._fernet.encrypt(json.dumps(args).encode()).decode()},
            request_id=current_request_id(),
            next_attempt_at=utcnow() + grace,
        )
        db.add(job)
        return job

    async def dispatch(self, row: OutboxJob) -> None:
        """Hand a committed job to the runner now, if the broker answers in time; never raises:
        a job not sent now is sent by the relay."""
        if time.monotonic() < self._broker_down_until:
            return  # a send failed moments ago: no request waits for the broker meanwhile
        job = Job(row.id, row.name, row.task_id, self._open(row.args), row.request_id)
        if not await self._send(job):
            return
        try:
            await self._mark_sent(self._sessions, [job.id])
        except (OSError, SQLAlchemyError):
            logger.warning("could not mark a job sent", extra={"task_id": job.task_id})

    async def relay_once(self) -> int:
        """Send the jobs that are due (those lost on their way too); how many went."""
        await self._sweep()
        jobs = await self._claim_due()
        sent: list[int] = []
        for index, job in enumerate(jobs):
            if not await self._send(job):
                await self._postpone(jobs[index:])
                break
            sent.append(job.id)
        if sent:
            await self._mark_sent(self._relay_sessions, sent)
            logger.info("outbox relay sent jobs", extra={"count": len(sent)})
        await self._prune()
        return len(sent)

    def start(self) -> None:
        """Run the relay in the background of this process."""
        if self._relay is None:
            self._relay = asyncio.create_task(self._relay_forever(), name="inkwell:outbox-relay")

    async def close(self) -> None:
        if self._relay is not None:
            self._relay.cancel()
            await asyncio.gather(self._relay, return_exceptions=True)
            self._relay = None

    async def _relay_forever(self) -> None:
        while True:
            try:
                await self.relay_once()
            except (OSError, SQLAlchemyError):
                logger.warning("outbox relay could not reach the database", exc_info=True)
            await asyncio.sleep(with_jitter(self._interval))

    async def _send(self, job: Job) -> bool:
        try:
            with anyio.fail_after(self._send_timeout):
                await self._runner.send(job)
        except Exception:  # the broker's errors are many (kombu, redis, amqp, timeouts)
            self._broker_down_until = time.monotonic() + self._interval
            logger.warning(
                "job not sent: the broker did not take it, the outbox will send it again",
                extra={"task": job.name, "task_id": job.task_id},
                exc_info=True,
            )
            return False
        return True

    async def sweep_once(self) -> int:
        """Make the jobs sent but lost on their way due again; how many. A job is lost when its
        task is still pending, or retrying, or held by a try, IMAGE_STUCK_AFTER_SECONDS after it
        was sent (a held one also the hard time limit after its hold was taken: it is running)."""
        now = utcnow()
        cutoff = now - timedelta(seconds=self._stuck_after)
        held = now - timedelta(seconds=max(self._stuck_after, self._time_limit))
        unfinished = (
            # Implied by the three cases below; stated so that the (name, state) index finds the
            # few unfinished tasks instead of reading a week of sent jobs.
            Task.name.in_(JOB_NAMES),
            Task.state.in_((TaskState.PENDING, TaskState.RETRY, TaskState.STARTED)),
            or_(
                Task.state == TaskState.PENDING,
                and_(Task.state == TaskState.RETRY, Task.updated_at <= cutoff),
                and_(Task.state == TaskState.STARTED, Task.updated_at <= held),
            ),
        )
        lost = (OutboxJob.sent_at.is_not(None), OutboxJob.sent_at <= cutoff)
        ids = (
            select(OutboxJob.id)
            .join(Task, Task.id == OutboxJob.task_id)
            .where(*lost, *unfinished)
            .order_by(OutboxJob.id)
            .limit(RELAY_BATCH)
            .with_for_update(of=OutboxJob, skip_locked=True)
        )
        async with self._relay_sessions() as db:
            rows = await db.execute(
                update(OutboxJob)
                .where(OutboxJob.id.in_(ids), *lost)
                .values(sent_at=None, next_attempt_at=now)
                .returning(OutboxJob.task_id)
                .execution_options(synchronize_session=False)
            )
            found = list(rows.scalars())
            await db.commit()
        if found:
            logger.warning("jobs lost on their way sent again", extra={"task_ids": found})
        return len(found)

    async def _sweep(self) -> None:
        if time.monotonic() - self._last_sweep < self._sweep_every:
            return
        self._last_sweep = time.monotonic()
        await self.sweep_once()

    async def _claim_due(self) -> list[Job]:
        now = utcnow()
        due = (OutboxJob.sent_at.is_(None), OutboxJob.next_attempt_at <= now)
        ids = (
            select(OutboxJob.id)
            .where(*due)
            .order_by(OutboxJob.id)
            .limit(RELAY_BATCH)
            .with_for_update(skip_locked=True)
        )
        async with self._relay_sessions() as db:
            rows = await db.execute(
                update(OutboxJob)
                .where(OutboxJob.id.in_(ids), *due)
                .values(
                    attempts=OutboxJob.attempts + 1,
                    # Claimed: no other relay takes them while this one sends.
                    next_attempt_at=now + timedelta(seconds=CLAIM_SECONDS),
                )
                .returning(
                    OutboxJob.id,
                    OutboxJob.name,
                    OutboxJob.task_id,
                    OutboxJob.args,
                    OutboxJob.request_id,
                    OutboxJob.attempts,
                )
                .execution_options(synchronize_session=False)
            )
            claimed = sorted(rows.all())
            await db.commit()
        self._attempts = {row.id: row.attempts for row in claimed}
        jobs, unreadable = [], []
        for r in claimed:
            try:
                jobs.append(Job(r.id, r.name, r.task_id, self._open(r.args), r.request_id))
            except InvalidToken:
                unreadable.append(r.id)
        if unreadable:  # sealed with another secret: no relay can ever send them
            logger.error("outbox jobs sealed with another key dropped", extra={"ids": unreadable})
            await self._mark_sent(self._relay_sessions, unreadable)
        return jobs

    def _open(self, args: dict[str, Any]) -> dict[str, Any]:
        opened: dict[str, Any] = json.loads(self._fernet.decrypt(args["sealed"]))
        return opened

    async def _postpone(self, jobs: list[Job]) -> None:
        attempts = min(self._attempts.get(job.id, 1) for job in jobs)
        wait = min(self._retry_max, RETRY_BASE_SECONDS * 2 ** (attempts - 1))
        async with self._relay_sessions() as db:
            await db.execute(
                update(OutboxJob)
                .where(OutboxJob.id.in_([job.id for job in jobs]))
                .values(next_attempt_at=utcnow() + timedelta(seconds=with_jitter(wait)))
                .execution_options(synchronize_session=False)
            )
            await db.commit()

    @staticmethod
    async def _mark_sent(sessions: async_sessionmaker[AsyncSession], ids: list[int]) -> None:
        async with sessions() as db:
            await db.execute(
                update(OutboxJob)
                .where(OutboxJob.id.in_(ids))
                .values(sent_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            await db.commit()

    async def _prune(self) -> None:
        """Sent jobs are kept a week (what went when), then deleted."""
        if time.monotonic() - self._last_prune < PRUNE_EVERY_SECONDS:
            return
        self._last_prune = time.monotonic()
        async with self._relay_sessions() as db:
            await db.execute(delete(OutboxJob).where(OutboxJob.sent_at < utcnow() - KEEP_SENT))
            await db.commit()
