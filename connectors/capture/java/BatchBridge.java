/*
 * One JPype crossing per batch instead of several per record: the Python handler of the embedded
 * engine asks for a whole batch as one string and marks it processed with one call. Each call from
 * Python into Java (and each element of a Java list iterated from Python) costs tens of
 * microseconds, more than decoding the record itself.
 *
 * Built once by connectors/capture/jvm.py with javac against the Debezium jars.
 */
package cdc.offsets;

import io.debezium.engine.ChangeEvent;
import io.debezium.engine.DebeziumEngine;
import java.util.List;

public final class BatchBridge {
    private BatchBridge() {}

    /**
     * The batch as text: per record a line "destination \t key \t value" (key or value "-" when
     * null). Debezium's JSON converter writes compact JSON, with no tab or newline outside strings
     * and those inside escaped, so the separators cannot occur in a field.
     */
    public static String lines(List<ChangeEvent<String, String>> records) {
        int size = 0;
        for (ChangeEvent<String, String> r : records) {
            String v = r.value();
            size += 64 + (v == null ? 1 : v.length());
        }
        StringBuilder out = new StringBuilder(size);
        for (ChangeEvent<String, String> r : records) {
            String k = r.key();
            String v = r.value();
            out.append(r.destination()).append('\t');
            out.append(k == null ? "-" : k).append('\t');
            out.append(v == null ? "-" : v).append('\n');
        }
        return out.toString();
    }

    /** Mark every record of the batch processed, then the batch finished. */
    public static void commit(
            List<ChangeEvent<String, String>> records,
            DebeziumEngine.RecordCommitter<ChangeEvent<String, String>> committer)
            throws InterruptedException {
        for (ChangeEvent<String, String> r : records) {
            committer.markProcessed(r);
        }
        committer.markBatchFinished();
    }
}
