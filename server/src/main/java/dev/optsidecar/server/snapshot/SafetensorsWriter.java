package dev.optsidecar.server.snapshot;

import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.optsidecar.server.fileutil.Channels;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.zip.CRC32C;

/**
 * Writes one safetensors file: the 8-byte header length, the JSON header padded with spaces to a
 * multiple of 8, then every tensor's float32 data back to back in header order. The CRC32C and
 * size come out of the same pass that writes the bytes.
 */
final class SafetensorsWriter {
    /** What was written: total bytes, their CRC32C and the number of tensors. */
    record Written(long bytes, int crc32c, int tensors) {}

    private SafetensorsWriter() {}

    /** The header JSON, unpadded. Validates keys (non-empty, unique, not __metadata__) and shapes. */
    static byte[] headerJson(Map<String, String> metadata, List<TensorOut> tensors) throws IOException {
        ObjectNode header = Json.MAPPER.createObjectNode();
        ObjectNode meta = header.putObject(SafetensorsFile.METADATA_KEY);
        metadata.forEach((k, v) -> {
            if (k == null || v == null) {
                throw new IllegalArgumentException("metadata keys and values must not be null");
            }
            meta.put(k, v);
        });
        Set<String> seen = new HashSet<>();
        long begin = 0;
        for (TensorOut t : tensors) {
            String key = t.key();
            if (key.isEmpty() || key.equals(SafetensorsFile.METADATA_KEY) || !seen.add(key)) {
                throw new IllegalArgumentException("tensor key '" + key + "' is empty, reserved or repeated");
            }
            long end = begin + t.numel() * Float.BYTES;
            ObjectNode info = header.putObject(key);
            info.put("dtype", SafetensorsFile.DTYPE);
            ArrayNode shape = info.putArray("shape");
            for (long d : t.shape()) {
                shape.add(d);
            }
            info.putArray("data_offsets").add(begin).add(end);
            begin = end;
        }
        return Json.MAPPER.writeValueAsBytes(header);
    }

    /**
     * Writes the file at the channel's current position using {@code buf} (a direct buffer of at
     * least 1 MiB) for the data. Throws IllegalStateException if a reader does not fill its chunk.
     */
    static Written write(FileChannel ch, Map<String, String> metadata, List<TensorOut> tensors, ByteBuffer buf)
            throws IOException {
        byte[] json = headerJson(metadata, tensors);
        int padded = (json.length + 7) & ~7;
        if (padded > SafetensorsFile.MAX_HEADER_BYTES) {
            throw new IllegalArgumentException("safetensors header of " + padded + " bytes is too large");
        }
        ByteBuffer head = ByteBuffer.allocate(8 + padded).order(ByteOrder.LITTLE_ENDIAN);
        head.putLong(padded).put(json);
        while (head.hasRemaining()) {
            head.put((byte) ' ');
        }
        head.flip();
        CRC32C crc = new CRC32C();
        crc.update(head);
        head.rewind();
        long bytes = Channels.writeFully(ch, head);

        int chunkElements = Math.min(buf.capacity(), IoBuffers.SIZE) / Float.BYTES;
        for (TensorOut t : tensors) {
            long numel = t.numel();
            TensorReader reader = t.values();
            for (long offset = 0; offset < numel; ) {
                int count = (int) Math.min(chunkElements, numel - offset);
                int len = count * Float.BYTES;
                buf.clear().limit(len);
                buf.order(ByteOrder.LITTLE_ENDIAN);
                reader.read(offset, count, buf);
                if (buf.position() != len) {
                    throw new IllegalStateException("tensor '" + t.key() + "': reader produced " + buf.position()
                            + " bytes for " + count + " elements at offset " + offset + ", expected " + len);
                }
                buf.flip();
                crc.update(buf);
                buf.rewind();
                bytes += Channels.writeFully(ch, buf);
                offset += count;
            }
        }
        return new Written(bytes, (int) crc.getValue(), tensors.size());
    }
}
