package dev.optsidecar.server.snapshot;

import com.fasterxml.jackson.core.JacksonException;
import com.fasterxml.jackson.databind.JsonNode;
import dev.optsidecar.server.fileutil.Channels;

import java.io.EOFException;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Collections;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A safetensors file holding float32 tensors, its header parsed and validated: the header length
 * within the file, UTF-8 JSON, a string-to-string {@code __metadata__}, dtype F32 only, shapes
 * matching their byte ranges, and byte ranges that tile the data section exactly (no gaps, no
 * overlaps, ending at the end of the file).
 *
 * <p>Only the header is held in memory. Each {@link #readAll} opens the file, streams the tensor
 * in chunks of at most 1 MiB and closes it again, so an instance holds no file descriptor and
 * {@link #close()} has nothing to release; it exists so that callers can use try-with-resources.
 */
public final class SafetensorsFile implements AutoCloseable {
    static final String METADATA_KEY = "__metadata__";
    static final String DTYPE = "F32";
    /** The largest header the reference implementation accepts. */
    static final long MAX_HEADER_BYTES = 100_000_000L;

    private final Path path;
    private final long size;
    private final long dataStart;
    private final Map<String, TensorMeta> tensors;
    private final Map<String, Long> begins;
    private final Map<String, String> metadata;

    private SafetensorsFile(Path path, long size, long dataStart, Map<String, TensorMeta> tensors,
                            Map<String, Long> begins, Map<String, String> metadata) {
        this.path = path;
        this.size = size;
        this.dataStart = dataStart;
        this.tensors = Collections.unmodifiableMap(tensors);
        this.begins = begins;
        this.metadata = Collections.unmodifiableMap(metadata);
    }

    /** Parses and validates the header; throws {@link SafetensorsFormatException} naming the file if it is bad. */
    public static SafetensorsFile open(Path p) throws IOException {
        try (FileChannel ch = FileChannel.open(p, StandardOpenOption.READ)) {
            long size = ch.size();
            if (size < 8) {
                throw bad(p, "only " + size + " bytes, shorter than the 8-byte header length");
            }
            ByteBuffer len = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN);
            Channels.readFully(ch, len, 0);
            long n = len.flip().getLong();
            if (n < 2 || n > MAX_HEADER_BYTES || n > size - 8) {
                throw bad(p, "header length " + n + " is out of bounds for a file of " + size + " bytes");
            }
            ByteBuffer header = ByteBuffer.allocate((int) n);
            Channels.readFully(ch, header, 8);
            header.flip();
            return parse(p, size, header);
        }
    }

    private static SafetensorsFile parse(Path p, long size, ByteBuffer header) throws IOException {
        String text;
        try {
            text = StandardCharsets.UTF_8.newDecoder().onMalformedInput(CodingErrorAction.REPORT)
                    .onUnmappableCharacter(CodingErrorAction.REPORT).decode(header).toString();
        } catch (CharacterCodingException e) {
            throw bad(p, "header is not valid UTF-8");
        }
        if (!text.startsWith("{")) {
            throw bad(p, "header does not start with '{'");
        }
        JsonNode root;
        try {
            root = Json.MAPPER.readTree(text);
        } catch (JacksonException e) {
            throw bad(p, "header is not valid JSON (" + e.getOriginalMessage() + ")");
        }
        if (root == null || !root.isObject()) {
            throw bad(p, "header is not a JSON object");
        }
        long dataStart = 8 + (long) header.limit();
        long dataBytes = size - dataStart;
        Map<String, String> metadata = new LinkedHashMap<>();
        Map<String, TensorMeta> tensors = new LinkedHashMap<>();
        Map<String, Long> begins = new LinkedHashMap<>();
        List<long[]> ranges = new ArrayList<>();
        for (Map.Entry<String, JsonNode> e : root.properties()) {
            String key = e.getKey();
            JsonNode v = e.getValue();
            if (key.equals(METADATA_KEY)) {
                if (!v.isObject()) {
                    throw bad(p, "__metadata__ is not an object");
                }
                for (Map.Entry<String, JsonNode> kv : v.properties()) {
                    if (!kv.getValue().isTextual()) {
                        throw bad(p, "__metadata__ value for '" + kv.getKey() + "' is not a string");
                    }
                    metadata.put(kv.getKey(), kv.getValue().textValue());
                }
                continue;
            }
            if (!v.isObject()) {
                throw bad(p, "tensor '" + key + "' is not an object");
            }
            JsonNode dtype = v.get("dtype");
            if (dtype == null || !dtype.isTextual()) {
                throw bad(p, "tensor '" + key + "' has no dtype");
            }
            if (!DTYPE.equals(dtype.textValue())) {
                throw bad(p, "tensor '" + key + "' has dtype " + dtype.textValue() + "; only F32 is supported");
            }
            long[] shape = longs(p, key, "shape", v.get("shape"), -1);
            long numel;
            try {
                numel = TensorMeta.numel(shape);
            } catch (IllegalArgumentException ex) {
                throw bad(p, "tensor '" + key + "': " + ex.getMessage());
            }
            long[] offsets = longs(p, key, "data_offsets", v.get("data_offsets"), 2);
            if (offsets[1] < offsets[0] || offsets[1] > dataBytes) {
                throw bad(p, "tensor '" + key + "' has data_offsets [" + offsets[0] + ", " + offsets[1]
                        + "] outside the " + dataBytes + " data bytes");
            }
            if (offsets[1] - offsets[0] != numel * Float.BYTES) {
                throw bad(p, "tensor '" + key + "' spans " + (offsets[1] - offsets[0]) + " bytes but its shape needs "
                        + numel * Float.BYTES);
            }
            tensors.put(key, new TensorMeta(shape, numel));
            begins.put(key, offsets[0]);
            ranges.add(offsets);
        }
        ranges.sort(Comparator.<long[]>comparingLong(r -> r[0]).thenComparingLong(r -> r[1]));
        long at = 0;
        for (long[] r : ranges) {
            if (r[0] != at) {
                throw bad(p, "tensor data is not contiguous: a range starts at " + r[0] + ", expected " + at);
            }
            at = r[1];
        }
        if (at != dataBytes) {
            throw bad(p, "tensor data ends at " + at + " but the file has " + dataBytes + " data bytes");
        }
        return new SafetensorsFile(p, size, dataStart, tensors, begins, metadata);
    }

    private static long[] longs(Path p, String key, String field, JsonNode node, int length) throws IOException {
        if (node == null || !node.isArray() || (length >= 0 && node.size() != length)) {
            throw bad(p, "tensor '" + key + "' has no valid " + field);
        }
        long[] out = new long[node.size()];
        for (int i = 0; i < out.length; i++) {
            JsonNode x = node.get(i);
            if (!x.isIntegralNumber() || !x.canConvertToLong() || x.longValue() < 0) {
                throw bad(p, "tensor '" + key + "' has a " + field + " entry that is not a non-negative integer");
            }
            out[i] = x.longValue();
        }
        return out;
    }

    private static SafetensorsFormatException bad(Path p, String what) {
        return new SafetensorsFormatException(p.getFileName() + ": " + what);
    }

    public Path path() {
        return path;
    }

    /** The file's size in bytes when its header was read. */
    public long size() {
        return size;
    }

    /** Key to (shape, numel), in the order the header lists them. */
    public Map<String, TensorMeta> tensors() {
        return tensors;
    }

    /** The {@code __metadata__} map (empty when the header has none). */
    public Map<String, String> metadata() {
        return metadata;
    }

    /** Byte offset in the file where tensor {@code key}'s data begins. */
    public long dataOffset(String key) {
        Long begin = begins.get(key);
        if (begin == null) {
            throw new IllegalArgumentException("no tensor '" + key + "' in " + path.getFileName());
        }
        return dataStart + begin;
    }

    /**
     * Streams every value of tensor {@code key} to {@code into} in chunks of at most 1 MiB, in
     * increasing element order. A tensor with no elements produces no call.
     */
    public void readAll(String key, TensorWriter into) throws IOException {
        long position = dataOffset(key);
        long numel = tensors.get(key).numel();
        if (numel == 0) {
            return;
        }
        ByteBuffer buf = IoBuffers.take();
        try (FileChannel ch = FileChannel.open(path, StandardOpenOption.READ)) {
            int chunkElements = IoBuffers.SIZE / Float.BYTES;
            for (long offset = 0; offset < numel; ) {
                int count = (int) Math.min(chunkElements, numel - offset);
                buf.clear().limit(count * Float.BYTES);
                try {
                    Channels.readFully(ch, buf, position + offset * Float.BYTES);
                } catch (EOFException e) {
                    throw new EOFException(path.getFileName() + ": tensor '" + key + "' is cut short (" + e.getMessage()
                            + ")");
                }
                buf.flip();
                buf.order(ByteOrder.LITTLE_ENDIAN);
                into.write(offset, buf);
                offset += count;
            }
        } finally {
            IoBuffers.give(buf);
        }
    }

    /** Nothing to release (no descriptor is held between reads); present for try-with-resources. */
    @Override
    public void close() {
    }

    @Override
    public String toString() {
        return "SafetensorsFile[" + path.getFileName() + ", " + tensors.size() + " tensors]";
    }
}
