package dev.optsidecar.server.durability;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.protobuf.Struct;
import com.google.protobuf.util.JsonFormat;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.server.OptError;
import dev.optsidecar.server.fileutil.Fsync;
import dev.optsidecar.server.model.StepLog;
import dev.optsidecar.server.model.StepRecord;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.Map;
import java.util.zip.CRC32C;

/**
 * The steps applied to one model since one snapshot, appended before each is applied, so that a
 * step acknowledged to a client survives a crash: restoring replays them on the snapshot.
 *
 * <p>File: a header record naming the model, its run and the snapshot it follows, then one record
 * per step, each ending in its CRC32C; the format is in
 * {@link dev.optsidecar.server.durability the package documentation}. A record cut short by a
 * crash fails its checksum and ends the journal: its step was never acknowledged.
 */
public final class StepJournal implements StepLog, AutoCloseable {
    static final int FILE_MAGIC = 0x4E4A534F; // "OSJN"
    static final int RECORD_MAGIC = 0x5045_5453; // "STEP"
    private static final ObjectMapper JSON = new ObjectMapper();
    /** A step header's "kind" for a set-weights step (absent: a gradient step). */
    static final String SET_WEIGHTS = "set_weights";
    /** A set-weights header's "weights_view" for weights at the eval point (absent: the train point). */
    static final String EVAL = "eval";
    private static final int BUFFER_BYTES = 1 << 20;

    /** How far a record is pushed before the step is applied and acknowledged. */
    public enum Sync {
        /** To the disk (fsync): an acknowledged step survives a power loss. */
        FSYNC,
        /** To the operating system: an acknowledged step survives the server process dying. */
        WRITE
    }

    private final Path file;
    private final FileChannel channel;
    private final Sync sync;
    private final ByteBuffer buffer = ByteBuffer.allocateDirect(BUFFER_BYTES).order(ByteOrder.LITTLE_ENDIAN);
    private long position;
    /** Told how long each append took, and its fsync (negative without one). */
    private Timing timing = (appendNanos, fsyncNanos) -> { };

    /** How long an append took, for the server's metrics. */
    @FunctionalInterface
    public interface Timing {
        void appended(long appendNanos, long fsyncNanos);
    }

    private StepJournal(Path file, FileChannel channel, Sync sync, long position) {
        this.file = file;
        this.channel = channel;
        this.sync = sync;
        this.position = position;
    }

    /** Creates a journal file that follows snapshot {@code afterSnapshot} (at {@code version}) of a run. */
    public static StepJournal create(Path file, String model, String run, String afterSnapshot, long version,
                                     Sync sync) throws IOException {
        FileChannel ch = FileChannel.open(file, StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE);
        StepJournal j = new StepJournal(file, ch, sync, 0);
        ObjectNode h = JSON.createObjectNode()
                .put("model", model).put("run", run).put("after_snapshot", afterSnapshot).put("version", version);
        try {
            j.writeRecord(FILE_MAGIC, JSON.writeValueAsBytes(h), null);
            ch.force(true);
            Fsync.dir(file.getParent()); // fsync after create: the new name survives a crash
        } catch (IOException | RuntimeException e) {
            ch.close();
            throw e;
        }
        return j;
    }

    /** Reports each append's time to {@code timing}; returns this journal. */
    public synchronized StepJournal timed(Timing timing) {
        this.timing = timing;
        return this;
    }

    public Path file() {
        return file;
    }

    /** Bytes written so far. */
    public synchronized long size() {
        return position;
    }

    @Override
    public synchronized void append(StepRecord step) {
        ObjectNode h = JSON.createObjectNode()
                .put("version_before", step.versionBefore())
                .put("sum_of_squares", step.sumOfSquares())
                .put("lr_scale", step.lrScale())
                .put("staleness", step.staleness());
        ArrayNode contributions = h.putArray("contributions");
        step.contributions().forEach(c -> contributions.addObject()
                .put("client_id", c.getClientId()).put("step_id", Long.toUnsignedString(c.getStepId())));
        ArrayNode noGrad = h.putArray("no_grad");
        ArrayNode numel = h.putArray("numel");
        for (int t = 0; t < step.noGrad().length; t++) {
            numel.add(step.gradients().numel(t));
            if (step.noGrad()[t]) {
                noGrad.add(t);
            }
        }
        if (step.setsWeights()) {
            h.put("kind", SET_WEIGHTS);
            if (step.weightsView() == ViewKind.VIEW_EVAL) {
                h.put("weights_view", EVAL);
            }
        }
        ObjectNode changes = h.putObject("group_hyperparameters");
        for (Map.Entry<String, Struct> e : step.groupChanges().entrySet()) {
            changes.set(e.getKey(), structJson(e.getValue()));
        }
        long start = position;
        long started = System.nanoTime();
        try {
            writeRecord(RECORD_MAGIC, JSON.writeValueAsBytes(h), step);
            long fsync = -1;
            if (sync == Sync.FSYNC) {
                long written = System.nanoTime();
                channel.force(false);
                fsync = System.nanoTime() - written;
            }
            timing.appended(System.nanoTime() - started, fsync);
        } catch (IOException e) {
            try { // never leave a partial record that would hide the ones after it
                channel.truncate(start);
                position = start;
            } catch (IOException ignored) {
                // the checksum still marks the partial record as the journal's end
            }
            throw OptError.internal(e, "step journal %s: cannot record the step to version %d: %s; it was not applied",
                    file.getFileName(), step.versionBefore() + 1, e.getMessage());
        }
    }

    /** A Struct as the JSON object protobuf's JSON mapping gives it. */
    static JsonNode structJson(Struct s) {
        try {
            return JSON.readTree(JsonFormat.printer().omittingInsignificantWhitespace().print(s));
        } catch (IOException e) {
            throw new IllegalStateException("a Struct prints as JSON", e);
        }
    }

    /** The Struct a header's JSON object holds. */
    static Struct struct(JsonNode json) throws InvalidProtocolBufferException {
        Struct.Builder b = Struct.newBuilder();
        JsonFormat.parser().merge(json.toString(), b);
        return b.build();
    }

    /** magic, header length, header, the step's gradients (if any), CRC32C of all of it. */
    private void writeRecord(int magic, byte[] header, StepRecord step) throws IOException {
        CRC32C crc = new CRC32C();
        buffer.clear();
        buffer.putInt(magic).putInt(header.length);
        put(header, crc);
        if (step != null) {
            for (int t = 0; t < step.noGrad().length; t++) {
                if (step.noGrad()[t]) {
                    continue;
                }
                long numel = step.gradients().numel(t);
                for (long offset = 0; offset < numel; ) {
                    if (buffer.remaining() < Float.BYTES) {
                        flush(crc);
                    }
                    int count = (int) Math.min(buffer.remaining() / Float.BYTES, numel - offset);
                    step.gradients().read(t, offset, count, buffer);
                    offset += count;
                }
            }
        }
        if (buffer.remaining() < Integer.BYTES) {
            flush(crc);
        }
        ByteBuffer tail = buffer.duplicate().flip();
        crc.update(tail);
        buffer.putInt((int) crc.getValue());
        buffer.flip();
        writeFully();
    }

    private void put(byte[] bytes, CRC32C crc) throws IOException {
        for (int done = 0; done < bytes.length; ) {
            if (!buffer.hasRemaining()) {
                flush(crc);
            }
            int n = Math.min(buffer.remaining(), bytes.length - done);
            buffer.put(bytes, done, n);
            done += n;
        }
    }

    /** Checksums and writes what the buffer holds. */
    private void flush(CRC32C crc) throws IOException {
        buffer.flip();
        crc.update(buffer.duplicate());
        writeFully();
        buffer.clear();
    }

    private void writeFully() throws IOException {
        while (buffer.hasRemaining()) {
            position += channel.write(buffer, position);
        }
    }

    @Override
    public synchronized void close() throws IOException {
        channel.close();
    }

    static ObjectMapper json() {
        return JSON;
    }
}
