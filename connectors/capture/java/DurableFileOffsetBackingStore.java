/*
 * Debezium offsets in a file that survives crashes: every save writes a temporary file, fsyncs it,
 * renames it over the target and fsyncs the directory. Kafka's FileOffsetBackingStore truncates and
 * rewrites its file in place without fsync, so a process killed mid-write leaves a torn file, and a
 * machine crash can lose an offset the connector already confirmed to the replication slot.
 *
 * Format (text, read by connectors/capture/debezium.py for status and position checks):
 *   # cdc-history debezium offsets v1
 *   <base64 key>\t<base64 value or ->
 * Keys and values are the JSON bytes of Kafka Connect's internal converter.
 *
 * Built once by connectors/capture/jvm.py with javac against the Debezium jars.
 */
package cdc.offsets;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.util.Base64;
import java.util.Collections;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

import org.apache.kafka.common.config.ConfigException;
import org.apache.kafka.connect.errors.ConnectException;
import org.apache.kafka.connect.runtime.WorkerConfig;
import org.apache.kafka.connect.storage.MemoryOffsetBackingStore;

public class DurableFileOffsetBackingStore extends MemoryOffsetBackingStore {
    public static final String FILE_CONFIG = "offset.storage.file.filename";
    static final String HEADER = "# cdc-history debezium offsets v1";

    private Path file;

    @Override
    public void configure(WorkerConfig config) {
        super.configure(config);
        String name = config.originalsStrings().get(FILE_CONFIG);
        if (name == null || name.isEmpty()) {
            throw new ConfigException(FILE_CONFIG + " must name the offsets file");
        }
        file = Paths.get(name).toAbsolutePath();
    }

    @Override
    public synchronized void start() {
        super.start();
        load();
    }

    private void load() {
        if (!Files.exists(file)) {
            return;
        }
        Map<ByteBuffer, ByteBuffer> loaded = new HashMap<>();
        try {
            List<String> lines = Files.readAllLines(file, StandardCharsets.UTF_8);
            if (lines.isEmpty() || !lines.get(0).equals(HEADER)) {
                throw new ConnectException("offsets file " + file + " does not start with '" + HEADER + "'");
            }
            Base64.Decoder b64 = Base64.getDecoder();
            for (String line : lines.subList(1, lines.size())) {
                if (line.isEmpty()) {
                    continue;
                }
                String[] parts = line.split("\t", -1);
                if (parts.length != 2) {
                    throw new ConnectException("offsets file " + file + ": malformed line '" + line + "'");
                }
                ByteBuffer key = ByteBuffer.wrap(b64.decode(parts[0]));
                ByteBuffer value = parts[1].equals("-") ? null : ByteBuffer.wrap(b64.decode(parts[1]));
                loaded.put(key, value);
            }
        } catch (IOException | IllegalArgumentException e) {
            throw new ConnectException("cannot read offsets file " + file + ": " + e, e);
        }
        data.putAll(loaded);
    }

    @Override
    protected void save() {
        StringBuilder out = new StringBuilder(HEADER).append('\n');
        Base64.Encoder b64 = Base64.getEncoder();
        for (Map.Entry<ByteBuffer, ByteBuffer> e : data.entrySet()) {
            if (e.getKey() == null) {
                continue;
            }
            out.append(b64.encodeToString(e.getKey().array())).append('\t');
            out.append(e.getValue() == null ? "-" : b64.encodeToString(e.getValue().array())).append('\n');
        }
        Path dir = file.getParent();
        Path tmp = null;
        try {
            Files.createDirectories(dir);
            tmp = Files.createTempFile(dir, "." + file.getFileName() + ".", ".tmp");
            try (FileChannel ch = FileChannel.open(tmp, StandardOpenOption.WRITE)) {
                ByteBuffer bytes = ByteBuffer.wrap(out.toString().getBytes(StandardCharsets.UTF_8));
                while (bytes.hasRemaining()) {
                    ch.write(bytes);
                }
                ch.force(true);
            }
            Files.move(tmp, file, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
            tmp = null;
            try (FileChannel d = FileChannel.open(dir, StandardOpenOption.READ)) {
                d.force(true);
            }
        } catch (IOException e) {
            throw new ConnectException("cannot save offsets to " + file + ": " + e, e);
        } finally {
            if (tmp != null) {
                try {
                    Files.deleteIfExists(tmp);
                } catch (IOException ignored) {
                    // the failure being reported matters more than a stray temporary file
                }
            }
        }
    }

    @Override
    public Set<Map<String, Object>> connectorPartitions(String connectorName) {
        return Collections.emptySet();
    }
}
