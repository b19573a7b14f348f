import sys

from cdc.cli import main

code = main()
if "jpype" in sys.modules:
    import jpype

    if jpype.isJVMStarted():
        # A Debezium capture ran in this process, and everything it did is durable by now
        # (positions saved, state merged, files fsynced, the warehouse closed). The interpreter's
        # teardown racing the JVM's own threads can abort the process ("FATAL: exception not
        # rethrown", exit -6) after a clean run: end here, with cdc's own exit code.
        import logging
        import os

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)
sys.exit(code)
