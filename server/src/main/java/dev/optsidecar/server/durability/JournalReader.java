package dev.optsidecar.server.durability;

import com.fasterxml.jackson.databind.JsonNode;
import com.google.protobuf.Struct;
import com.google.protobuf.Value;
import dev.optsidecar.proto.v1.Contribution;
import dev.optsidecar.proto.v1.StepKind;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.server.model.StepRecord;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.zip.CRC32C;

/**
 * Reads a {@link StepJournal} back, record by record, verifying each record's checksum before
 * handing it out, so a step cut short by a crash is never replayed.
 */
public final class JournalReader implements AutoCloseable {
    private static final int MAX_HEADER_BYTES = 1 << 20;

    private final Path file;
    private final FileChannel channel;
    private final long size;
    private final JsonNode header;
    private long position;
    private String problem;

    private JournalReader(Path file, FileChannel channel) throws IOException {
        this.file = file;
        this.channel = channel;
        this.size = channel.size();
        Record h = readRecord(StepJournal.FILE_MAGIC);
        if (h == null) {
            throw new IOException("journal " + file.getFileName() + " has no valid header: " + problem);
        }
        this.header = h.header;
    }

    public static JournalReader open(Path file) throws IOException {
        FileChannel ch = FileChannel.open(file, StandardOpenOption.READ);
        try {
            return new JournalReader(file, ch);
        } catch (IOException | RuntimeException e) {
            ch.close();
            throw e;
        }
    }

    public String model() {
        return header.path("model").asText();
    }

    public String run() {
        return header.path("run").asText();
    }

    public String afterSnapshot() {
        return header.path("after_snapshot").asText();
    }

    /** The next verified step, or null at the end of the journal (see {@link #problem()}). */
    public StepRecord next() throws IOException {
        if (position == size || problem != null) {
            return null;
        }
        Record r = readRecord(StepJournal.RECORD_MAGIC);
        if (r == null) {
            return null;
        }
        JsonNode h = r.header;
        int tensors = h.path("numel").size();
        boolean[] noGrad = new boolean[tensors];
        h.path("no_grad").forEach(n -> noGrad[n.asInt()] = true);
        long[] numel = new long[tensors];
        long[] start = new long[tensors];
        long at = r.payloadStart;
        for (int t = 0; t < tensors; t++) {
            numel[t] = h.path("numel").get(t).asLong();
            start[t] = at;
            if (!noGrad[t]) {
                at += numel[t] * Float.BYTES;
            }
        }
        Map<String, Struct> changes = new LinkedHashMap<>();
        // Journals written before hyperparameters could change hold only learning rates.
        h.path("group_lr").fields().forEachRemaining(e -> changes.put(e.getKey(), Struct.newBuilder()
                .putFields("lr", Value.newBuilder().setNumberValue(e.getValue().asDouble()).build()).build()));
        var fields = h.path("group_hyperparameters").fields();
        while (fields.hasNext()) {
            var e = fields.next();
            changes.put(e.getKey(), StepJournal.struct(e.getValue()));
        }
        StepKind kind = StepJournal.SET_WEIGHTS.equals(h.path("kind").asText()) ? StepKind.STEP_SET_WEIGHTS
                : StepKind.STEP_GRADIENT;
        ViewKind weightsView = StepJournal.EVAL.equals(h.path("weights_view").asText()) ? ViewKind.VIEW_EVAL
                : ViewKind.VIEW_TRAIN;
        StepRecord.Gradients gradients = new StepRecord.Gradients() {
            @Override
            public long numel(int tensor) {
                return numel[tensor];
            }

            @Override
            public void read(int tensor, long offset, int count, ByteBuffer dst) {
                ByteBuffer slice = dst.slice().limit(count * Float.BYTES);
                try {
                    readFully(slice, start[tensor] + offset * Float.BYTES);
                } catch (IOException e) {
                    throw new java.io.UncheckedIOException(e);
                }
                dst.position(dst.position() + count * Float.BYTES);
            }
        };
        List<Contribution> contributions = new ArrayList<>();
        h.path("contributions").forEach(c -> contributions.add(Contribution.newBuilder()
                .setClientId(c.path("client_id").asText())
                .setStepId(Long.parseUnsignedLong(c.path("step_id").asText())).build()));
        return new StepRecord(contributions, h.path("version_before").asLong(), kind, weightsView, noGrad, changes,
                h.path("sum_of_squares").asDouble(), h.path("lr_scale").asDouble(1.0),
                h.path("staleness").asLong(0), gradients);
    }

    /** Why the journal ended before its last byte (a torn or corrupt record), or null. */
    public String problem() {
        return problem;
    }

    /** Bytes after the last good record. */
    public long unreadBytes() {
        return size - position;
    }

    private record Record(JsonNode header, long payloadStart) {}

    /** Reads and verifies the record at the current position; null (with {@link #problem}) if it is bad. */
    private Record readRecord(int magic) throws IOException {
        long at = position;
        if (size - at < 12) {
            return fail("truncated record at byte " + at);
        }
        ByteBuffer head = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN);
        readFully(head, at);
        head.flip();
        if (head.getInt() != magic) {
            return fail("bad record marker at byte " + at);
        }
        int headerLength = head.getInt();
        if (headerLength < 0 || headerLength > MAX_HEADER_BYTES || at + 8 + headerLength + 4 > size) {
            return fail("truncated record at byte " + at);
        }
        ByteBuffer headerBytes = ByteBuffer.allocate(headerLength);
        readFully(headerBytes, at + 8);
        JsonNode header;
        try {
            header = StepJournal.json().readTree(headerBytes.array());
        } catch (IOException e) {
            return fail("unreadable record header at byte " + at);
        }
        long payload = 0;
        if (magic == StepJournal.RECORD_MAGIC) {
            JsonNode numel = header.path("numel");
            boolean[] skip = new boolean[numel.size()];
            header.path("no_grad").forEach(n -> {
                if (n.asInt() >= 0 && n.asInt() < skip.length) {
                    skip[n.asInt()] = true;
                }
            });
            for (int t = 0; t < numel.size(); t++) {
                payload += skip[t] ? 0 : numel.get(t).asLong() * Float.BYTES;
            }
        }
        long end = at + 8 + headerLength + payload;
        if (payload < 0 || end + 4 > size) {
            return fail("truncated record at byte " + at);
        }
        if (checksum(at, end) != storedChecksum(end)) {
            return fail("checksum mismatch in the record at byte " + at);
        }
        position = end + 4;
        return new Record(header, at + 8 + headerLength);
    }

    private int checksum(long from, long to) throws IOException {
        CRC32C crc = new CRC32C();
        ByteBuffer buf = ByteBuffer.allocateDirect(1 << 20);
        for (long at = from; at < to; ) {
            buf.clear().limit((int) Math.min(buf.capacity(), to - at));
            readFully(buf, at);
            buf.flip();
            at += buf.remaining();
            crc.update(buf);
        }
        return (int) crc.getValue();
    }

    private int storedChecksum(long at) throws IOException {
        ByteBuffer b = ByteBuffer.allocate(4).order(ByteOrder.LITTLE_ENDIAN);
        readFully(b, at);
        return b.flip().getInt();
    }

    private void readFully(ByteBuffer dst, long at) throws IOException {
        while (dst.hasRemaining()) {
            int n = channel.read(dst, at);
            if (n < 0) {
                throw new IOException("journal " + file.getFileName() + " ends early at byte " + at);
            }
            at += n;
        }
    }

    private Record fail(String why) {
        problem = why;
        return null;
    }

    @Override
    public void close() throws IOException {
        channel.close();
    }
}
