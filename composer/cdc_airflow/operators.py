"""Operators that run ``cdc`` commands as Airflow tasks.

The service and Airflow live in separate environments (Airflow pins hundreds of packages; so do
Beam and the Google clients), so an operator never imports the service: it runs the ``cdc``
command of the environment the service is installed in (``cdc_command``, default the ``CDC_COMMAND``
environment variable, else ``cdc`` on the PATH) as a child process, streams what it prints to the
task log as it goes (progress lines included), and turns its exit code into the task's outcome:

- 0: success; the command's JSON report, where it has one, is the task's XCom return value;
- 1: the command ran and found something wrong (a check failed, a table differs, a replay
  dead-lettered events, a source refused us): the task fails, its message says what, and Airflow's
  retries apply;
- 2: bad usage or an invalid registry: the task fails without retrying (a retry cannot fix it).

Secrets stay out of the DAG file and the log: ``connections`` maps an environment variable the
registry reads (``dsn: ${SHOP_DSN}``) to an Airflow connection id, whose URI is put into the child's
environment only (Composer: a Secret Manager backend holds it); ``secret_variables`` does the same
from Airflow Variables (``{"CDC_PII_KEY": "cdc_pii_key"}``). Both are read when the task runs (not
templated, so the UI's rendered fields never show them), registered with Airflow's secrets
masker, and redacted by the operator itself from every line of the command it logs and from its
failure message, so that even a line that printed one would reach the task log as ``***`` (the
operator's own redaction holds where Airflow's masker does not run, e.g. in ``dag.test()``). Nothing of the
environment is logged, and the command line holds no secret (``env`` is templated and shown: keep
secrets out of it).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from typing import Any

try:  # Airflow 3
    from airflow.sdk import BaseHook, BaseOperator, Variable
    from airflow.sdk.exceptions import AirflowException, AirflowFailException
    from airflow.sdk.log import mask_secret
except ImportError:  # Airflow 2.10+
    from airflow.exceptions import AirflowException, AirflowFailException  # type: ignore
    from airflow.hooks.base import BaseHook  # type: ignore[no-redef]
    from airflow.models import BaseOperator, Variable  # type: ignore[no-redef]
    from airflow.utils.log.secrets_masker import mask_secret  # type: ignore[no-redef]

EXIT_PROBLEM = 1
EXIT_USAGE = 2


class CdcCommandFailed(AirflowException):
    """The command ran and reported a problem (exit 1): retried by Airflow's retries."""


class CdcOperator(BaseOperator):
    """Runs ``cdc ARGUMENTS... [--config CONFIG]`` and fails the task on a non-zero exit.

    ``arguments`` and ``config`` are templated (``{{ data_interval_start }}`` and friends), as is
    ``env`` (extra environment variables that are not secret). ``connections`` and
    ``secret_variables`` bring secrets (see the module doc). ``json_output``:
    the command prints one JSON document on stdout (``--format json``), returned as the XCom
    value and handed to ``summarize`` to explain a failure.
    """

    template_fields: Sequence[str] = ("arguments", "config", "env")
    ui_color = "#e8f4ea"

    def __init__(
        self,
        *,
        arguments: Sequence[str],
        config: str | None = None,
        cdc_command: str | Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        connections: Mapping[str, str] | None = None,
        secret_variables: Mapping[str, str] | None = None,
        cwd: str | None = None,
        json_output: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.arguments = list(arguments)
        self.config = config
        self.cdc_command = cdc_command
        self.env = dict(env or {})
        self.connections = dict(connections or {})
        self.secret_variables = dict(secret_variables or {})
        self.cwd = cwd
        self.json_output = json_output
        self._process: subprocess.Popen[str] | None = None
        self._last_error = ""
        self._secrets: set[str] = set()  # values redacted from everything this task logs

    # ------------------------------------------------------------------ the command

    def command(self) -> list[str]:
        """The full command line (no secret ever appears in it)."""
        base = self.cdc_command or os.environ.get("CDC_COMMAND") or "cdc"
        argv = shlex.split(base) if isinstance(base, str) else list(base)
        argv += [str(a) for a in self.arguments]
        if self.config:
            argv += ["--config", str(self.config)]
        return argv

    def child_environment(self) -> dict[str, str]:
        env = {**os.environ, **{k: str(v) for k, v in self.env.items()}}
        for variable, conn_id in self.connections.items():
            connection = BaseHook.get_connection(conn_id)
            env[variable] = connection.get_uri()
            self._secret(env[variable])
            if connection.password:
                self._secret(connection.password)
        for variable, key in self.secret_variables.items():
            env[variable] = str(Variable.get(key))
            self._secret(env[variable])
        return env

    def _secret(self, value: str) -> None:
        # Airflow's masker, for its own logs; and our own redaction of what the child prints,
        # which holds however the task runs (dag.test() logs without the masker)
        mask_secret(value)
        if value:
            self._secrets.add(value)

    def _redact(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def execute(self, context: Any) -> Any:
        argv = self.command()
        self.log.info("running %s", shlex.join(argv))
        code, stdout = self._run(argv)
        if code == 0:
            return self._parse(stdout) if self.json_output else self._redact(_last_line(stdout))
        # a failed command may have printed its report, or only an error line (a source that
        # refused us): either way its exit code decides whether Airflow retries
        report = _json_or_none(stdout) if self.json_output else None
        what = self.summarize(report) if report is not None else _last_line(stdout)
        what = what or self._last_error  # `cdc` says why on stderr, in one line
        what = self._redact(what)
        message = f"`cdc {shlex.join(self.arguments)}` exited {code}"
        if what:
            message += f": {what}"
        if code == EXIT_USAGE:
            raise AirflowFailException(message + " (bad usage or registry: not retried)")
        raise CdcCommandFailed(message)

    def summarize(self, report: Any) -> str:
        """One line saying what the JSON report found wrong (subclasses know its shape)."""
        return ""

    def on_kill(self) -> None:
        # a task killed (timeout, marked failed) takes its command down with it: SIGTERM lets
        # `cdc` flush and exit cleanly as it does under Ctrl-C
        process = self._process
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)

    # ------------------------------------------------------------------ running it

    def _run(self, argv: list[str]) -> tuple[int, str]:
        try:
            process = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=self.child_environment(),
                cwd=self.cwd,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise AirflowFailException(
                f"the cdc command {argv[0]!r} was not found: install the service where the task "
                "runs and set cdc_command= or the CDC_COMMAND environment variable to it"
            ) from None
        self._process = process
        assert process.stdout is not None and process.stderr is not None
        stderr = process.stderr
        progress = threading.Thread(target=self._log_lines, args=(stderr,), daemon=True)
        progress.start()
        out: list[str] = []
        for line in process.stdout:
            out.append(line)
            if not self.json_output:
                self.log.info("%s", self._redact(line.rstrip("\n")))
        code = process.wait()
        progress.join(timeout=10)
        self._process = None
        return code, "".join(out)

    def _log_lines(self, stream: Any) -> None:
        for line in stream:
            # progress bars redraw with carriage returns: log the newest state of each line
            text = line.rstrip("\n").rsplit("\r", 1)[-1]
            if text.strip():
                text = self._redact(text)
                self.log.info("%s", text)
                self._last_error = text.strip()

    def _parse(self, stdout: str) -> Any:
        try:
            return json.loads(stdout)
        except json.JSONDecodeError:
            self.log.info("%s", self._redact(stdout))
            raise AirflowFailException(
                f"`{self.arguments[0]}` printed no JSON report (first 200 characters: "
                f"{stdout[:200]!r})"
            ) from None


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


class CdcCheckOperator(CdcOperator):
    """``cdc check [TABLE ...] --format json``: each table's invariants, freshness SLA, volume
    and schema drift. Fails when an error-level check failed (warnings pass and are logged); the
    report is the XCom value."""

    def __init__(
        self, *, tables: Sequence[str] = (), limit: int | None = None, **kwargs: Any
    ) -> None:
        arguments = ["check", *tables, "--format", "json"]
        if limit is not None:
            arguments += ["--limit", str(limit)]
        super().__init__(arguments=arguments, json_output=True, **kwargs)

    def execute(self, context: Any) -> Any:
        report = super().execute(context)
        for warning in _failed(report, "warn"):
            self.log.warning("check warning: %s", warning)
        return report

    def summarize(self, report: Any) -> str:
        failed = _failed(report, "error")
        return f"{len(failed)} check(s) failed: " + "; ".join(failed[:10])


def _failed(report: Any, level: str) -> list[str]:
    out = []
    for r in report.get("results", []) if isinstance(report, dict) else []:
        if r.get("level") == level and r.get("status") == "fail":
            keys = r.get("keys") or []
            first = f", first key {keys[0]}" if keys else ""
            out.append(f"{r.get('table')} {r.get('check')} {r.get('status')}{first}")
    return out


class CdcReconcileOperator(CdcOperator):
    """``cdc reconcile [TABLE ...] --format json [--repair] [--wait S]``: compares each table with
    its source at one log position. Fails when a table differs or could not be compared in time;
    the per-table reports are the XCom value."""

    def __init__(
        self,
        *,
        tables: Sequence[str] = (),
        repair: bool = False,
        wait_s: int | None = None,
        **kwargs: Any,
    ) -> None:
        arguments = ["reconcile", *tables, "--format", "json"]
        if repair:
            arguments.append("--repair")
        if wait_s is not None:
            arguments += ["--wait", str(wait_s)]
        super().__init__(arguments=arguments, json_output=True, **kwargs)

    def summarize(self, report: Any) -> str:
        tables = report if isinstance(report, list) else [report]
        out = []
        for t in tables:
            if not isinstance(t, dict) or t.get("status") == "equal":
                continue
            counts = ", ".join(
                f"{len(t.get(k) or [])} {k}" for k in ("missing", "extra", "different")
            )
            out.append(f"{t.get('table')} {t.get('status')} ({counts})")
        return "; ".join(out)


class CdcReplayOperator(CdcOperator):
    """``cdc replay TABLE`` over a range of the changelog (commit time ``[since, until)`` and/or
    seq ``[from_seq, to_seq]``; all templated, so a backfill DAG can replay its data interval; an
    empty value leaves that end open). Without a table, ``cdc job replay`` replays every table
    on Beam (``job_options``: e.g. ``["--runner", "DataflowRunner", "--project", ...]``).
    Safe to repeat: a retry or an overlapping run leaves the tables as they are."""

    template_fields: Sequence[str] = (
        *CdcOperator.template_fields,
        "table",
        "since",
        "until",
        "from_seq",
        "to_seq",
    )

    def __init__(
        self,
        *,
        table: str | None = None,
        since: str | None = None,
        until: str | None = None,
        from_seq: str | None = None,
        to_seq: str | None = None,
        job_options: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(arguments=[], **kwargs)
        self.table, self.since, self.until = table, since, until
        self.from_seq, self.to_seq = from_seq, to_seq
        self.job_options = list(job_options)

    def execute(self, context: Any) -> Any:
        self.arguments = ["replay", self.table] if self.table else ["job", "replay"]
        for flag, value in (
            ("--since", self.since),
            ("--until", self.until),
            ("--from-seq", self.from_seq),
            ("--to-seq", self.to_seq),
        ):
            if value:
                self.arguments += [flag, str(value)]
        if not self.table:
            self.arguments += self.job_options
        return super().execute(context)
