"""A realistic subscription-business workload for ``cdc demo`` and the runtime tests.

PostgreSQL holds the subscription side (users, plans, subscriptions, invoices); MariaDB, when
present, the payment side (payments, refunds). Each step is one business action in its own
transaction: sign-ups with a trial, trials converting, plan upgrades and downgrades, renewals,
failed payments and retries, refunds, cancellations, and account deletions. A seeded RNG makes a
run reproducible.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

PG_SCHEMA = """
CREATE TABLE public.plans (
    id text PRIMARY KEY, name text NOT NULL, monthly_price numeric(10,2) NOT NULL, currency char(3) NOT NULL
);
CREATE TABLE public.users (
    id bigserial PRIMARY KEY, email text NOT NULL, country text, created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE public.subscriptions (
    id bigserial PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES public.users ON DELETE CASCADE,
    plan_id text NOT NULL REFERENCES public.plans,
    status text NOT NULL,
    amount numeric(10,2) NOT NULL,
    trial_ends_at timestamptz,
    current_period_end timestamptz,
    canceled_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE public.invoices (
    id bigserial PRIMARY KEY,
    subscription_id bigint NOT NULL REFERENCES public.subscriptions ON DELETE CASCADE,
    amount numeric(10,2) NOT NULL,
    status text NOT NULL,
    attempts int NOT NULL DEFAULT 0,
    issued_at timestamptz NOT NULL DEFAULT now(),
    paid_at timestamptz
);
INSERT INTO public.plans VALUES
    ('basic', 'Basic', 9.99, 'EUR'), ('pro', 'Pro', 29.00, 'EUR'), ('team', 'Team', 79.00, 'EUR');
"""

MYSQL_SCHEMA = [
    """CREATE TABLE payments (
        id BIGINT AUTO_INCREMENT PRIMARY KEY, invoice_id BIGINT NOT NULL, user_id BIGINT NOT NULL,
        amount DECIMAL(10,2) NOT NULL, currency CHAR(3) NOT NULL, status VARCHAR(16) NOT NULL,
        card_last4 CHAR(4), failure_code VARCHAR(32), created_at DATETIME(6) NOT NULL
    )""",
    """CREATE TABLE refunds (
        id BIGINT AUTO_INCREMENT PRIMARY KEY, payment_id BIGINT NOT NULL, amount DECIMAL(10,2) NOT NULL,
        reason VARCHAR(64) NOT NULL, created_at DATETIME(6) NOT NULL
    )""",
]

PLAN_PRICES = {"basic": Decimal("9.99"), "pro": Decimal("29.00"), "team": Decimal("79.00")}
PLAN_ORDER = ["basic", "pro", "team"]
FAILURE_CODES = ["card_declined", "insufficient_funds", "expired_card"]


@dataclass
class WorkloadStats:
    actions: dict[str, int] = field(default_factory=dict)
    transactions: int = 0

    def count(self, action: str) -> None:
        self.actions[action] = self.actions.get(action, 0) + 1
        self.transactions += 1


class SubscriptionWorkload:
    """Drives business actions against a billing PostgreSQL and, optionally, a payments MariaDB."""

    def __init__(self, pg_dsn: str, mysql_params: dict[str, Any] | None = None, seed: int = 7):
        import psycopg

        self.rng = random.Random(seed)
        # autocommit: each `with transaction()` block is then a real transaction, not a savepoint
        self.pg = psycopg.connect(pg_dsn, autocommit=True)
        self.my = None
        if mysql_params is not None:
            import pymysql

            self.my = pymysql.connect(autocommit=False, **mysql_params)
        self.stats = WorkloadStats()
        self._actions: list[tuple[str, Callable[[], bool], int]] = [
            ("sign_up", self.sign_up, 20),
            ("convert_trial", self.convert_trial, 14),
            ("change_plan", self.change_plan, 12),
            ("renew", self.renew, 22),
            ("retry_payment", self.retry_payment, 10),
            ("refund", self.refund, 5),
            ("cancel", self.cancel, 6),
            ("delete_account", self.delete_account, 2),
        ]

    # ------------------------------------------------------------------ set-up

    @staticmethod
    def create_schema(pg_dsn: str, mysql_params: dict[str, Any] | None = None) -> None:
        import psycopg

        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(PG_SCHEMA)
        if mysql_params is not None:
            import pymysql

            with pymysql.connect(autocommit=True, **mysql_params) as conn, conn.cursor() as cur:
                for ddl in MYSQL_SCHEMA:
                    cur.execute(ddl)

    def close(self) -> None:
        self.pg.close()
        if self.my is not None:
            self.my.close()

    # ------------------------------------------------------------------ driving

    def step(self) -> str:
        """One business action (retrying another when the chosen one has nothing to act on)."""
        weights = [w for _, _, w in self._actions]
        for _ in range(10):
            name, action, _ = self.rng.choices(self._actions, weights=weights)[0]
            if action():
                self.stats.count(name)
                return name
        self.sign_up()
        self.stats.count("sign_up")
        return "sign_up"

    def run(
        self,
        seconds: float,
        rate: float,
        on_progress: Callable[[float, WorkloadStats], None] | None = None,
    ) -> None:
        """Run at ``rate`` actions per second for ``seconds``."""
        start = time.monotonic()
        done = 0
        while (elapsed := time.monotonic() - start) < seconds:
            target = int(elapsed * rate) + 1
            while done < target:
                self.step()
                done += 1
            if on_progress is not None:
                on_progress(elapsed, self.stats)
            time.sleep(min(0.05, max(0.0, (done / rate) - (time.monotonic() - start))))
        if on_progress is not None:
            on_progress(seconds, self.stats)

    # ------------------------------------------------------------------ actions

    def _one(self, sql: str, *params: Any) -> Any:
        row = self.pg.execute(sql, params).fetchone()
        return row[0] if row else None

    def _pick_subscription(self, status: str) -> int | None:
        return self._one(
            "SELECT id FROM public.subscriptions WHERE status = %s ORDER BY random() LIMIT 1",
            status,
        )

    def sign_up(self) -> bool:
        with self.pg.transaction():
            user_id = self._one(
                "INSERT INTO public.users (email, country) VALUES (%s, %s) RETURNING id",
                f"user{self.rng.randrange(10**9)}@example.com",
                self.rng.choice(["DE", "FR", "NL", "ES", "IT", "PL"]),
            )
            plan = self.rng.choice(PLAN_ORDER[:2])
            self.pg.execute(
                "INSERT INTO public.subscriptions (user_id, plan_id, status, amount, trial_ends_at) "
                "VALUES (%s, %s, 'trialing', %s, now() + interval '14 days')",
                (user_id, plan, PLAN_PRICES[plan]),
            )
        return True

    def convert_trial(self) -> bool:
        sub = self._pick_subscription("trialing")
        if sub is None:
            return False
        with self.pg.transaction():
            self.pg.execute(
                "UPDATE public.subscriptions SET status = 'active', trial_ends_at = NULL, "
                "current_period_end = now() + interval '1 month', updated_at = now() WHERE id = %s",
                (sub,),
            )
        return self._bill(sub)

    def change_plan(self) -> bool:
        sub = self._pick_subscription("active")
        if sub is None:
            return False
        current = self._one("SELECT plan_id FROM public.subscriptions WHERE id = %s", sub)
        idx = PLAN_ORDER.index(current)
        choices = [
            p
            for p in (
                PLAN_ORDER[idx - 1] if idx > 0 else None,
                PLAN_ORDER[idx + 1] if idx + 1 < len(PLAN_ORDER) else None,
            )
            if p
        ]
        plan = self.rng.choice(choices)
        with self.pg.transaction():
            self.pg.execute(
                "UPDATE public.subscriptions SET plan_id = %s, amount = %s, updated_at = now() WHERE id = %s",
                (plan, PLAN_PRICES[plan], sub),
            )
        return True

    def renew(self) -> bool:
        sub = self._pick_subscription("active")
        if sub is None:
            return False
        # one business action, one transaction over two tables: the period moves on and its
        # invoice is issued, or neither
        with self.pg.transaction():
            self.pg.execute(
                "UPDATE public.subscriptions SET current_period_end = current_period_end + interval '1 month', "
                "updated_at = now() WHERE id = %s",
                (sub,),
            )
            invoice = self._issue(sub)
        self._attempt_payment(sub, invoice)
        return True

    def _bill(self, sub: int) -> bool:
        """Issue an invoice for the subscription and try to pay it."""
        with self.pg.transaction():
            invoice = self._issue(sub)
        self._attempt_payment(sub, invoice)
        return True

    def _issue(self, sub: int) -> Any:
        """An open invoice for the subscription's amount (inside the caller's transaction)."""
        amount = self._one("SELECT amount FROM public.subscriptions WHERE id = %s", sub)
        return self._one(
            "INSERT INTO public.invoices (subscription_id, amount, status) VALUES (%s, %s, 'open') RETURNING id",
            sub,
            amount,
        )

    def _attempt_payment(self, sub: int, invoice: int) -> bool:
        ok = self.rng.random() < 0.85
        row = self.pg.execute(
            "SELECT s.user_id, i.amount FROM public.invoices i JOIN public.subscriptions s ON s.id = i.subscription_id "
            "WHERE i.id = %s",
            (invoice,),
        ).fetchone()
        if row is None:  # the account was deleted meanwhile
            return False
        user_id, amount = row
        if self.my is not None:
            with self.my.cursor() as cur:
                cur.execute(
                    "INSERT INTO payments (invoice_id, user_id, amount, currency, status, card_last4, failure_code, "
                    "created_at) VALUES (%s, %s, %s, 'EUR', %s, %s, %s, NOW(6))",
                    (
                        invoice,
                        user_id,
                        amount,
                        "succeeded" if ok else "failed",
                        f"{self.rng.randrange(10000):04d}",
                        None if ok else self.rng.choice(FAILURE_CODES),
                    ),
                )
            self.my.commit()
        with self.pg.transaction():
            if ok:
                self.pg.execute(
                    "UPDATE public.invoices SET status = 'paid', attempts = attempts + 1, paid_at = now() WHERE id = %s",
                    (invoice,),
                )
                self.pg.execute(
                    "UPDATE public.subscriptions SET status = 'active', updated_at = now() "
                    "WHERE id = %s AND status = 'past_due'",
                    (sub,),
                )
            else:
                self.pg.execute(
                    "UPDATE public.invoices SET status = 'failed', attempts = attempts + 1 WHERE id = %s",
                    (invoice,),
                )
                self.pg.execute(
                    "UPDATE public.subscriptions SET status = 'past_due', updated_at = now() WHERE id = %s",
                    (sub,),
                )
        return ok

    def retry_payment(self) -> bool:
        row = self.pg.execute(
            "SELECT i.subscription_id, i.id FROM public.invoices i WHERE i.status = 'failed' AND i.attempts < 4 "
            "ORDER BY random() LIMIT 1"
        ).fetchone()
        if row is None:
            return False
        self._attempt_payment(row[0], row[1])
        return True

    def refund(self) -> bool:
        if self.my is None:
            return False
        with self.my.cursor() as cur:
            cur.execute(
                "SELECT p.id, p.amount FROM payments p LEFT JOIN refunds r ON r.payment_id = p.id "
                "WHERE p.status = 'succeeded' AND r.id IS NULL ORDER BY RAND() LIMIT 1"
            )
            row = cur.fetchone()
            if row is None:
                self.my.rollback()
                return False
            full = self.rng.random() < 0.6
            amount = row[1] if full else (row[1] / 2).quantize(Decimal("0.01"))
            cur.execute(
                "INSERT INTO refunds (payment_id, amount, reason, created_at) VALUES (%s, %s, %s, NOW(6))",
                (
                    row[0],
                    amount,
                    self.rng.choice(["requested_by_customer", "duplicate", "service_outage"]),
                ),
            )
            if full:
                cur.execute("UPDATE payments SET status = 'refunded' WHERE id = %s", (row[0],))
        self.my.commit()
        return True

    def cancel(self) -> bool:
        sub = self._pick_subscription(self.rng.choice(["active", "past_due", "trialing"]))
        if sub is None:
            return False
        with self.pg.transaction():
            self.pg.execute(
                "UPDATE public.subscriptions SET status = 'canceled', canceled_at = now(), updated_at = now() "
                "WHERE id = %s",
                (sub,),
            )
        return True

    def delete_account(self) -> bool:
        user = self._one(
            "SELECT user_id FROM public.subscriptions WHERE status = 'canceled' ORDER BY random() LIMIT 1"
        )
        if user is None:
            return False
        with self.pg.transaction():
            # ON DELETE CASCADE removes the user's subscriptions and invoices: deletes in every table
            self.pg.execute("DELETE FROM public.users WHERE id = %s", (user,))
        return True
