package dev.optsidecar.server.snapshot;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.zip.CRC32C;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

class SafetensorsFileTest {
    @TempDir
    Path dir;

    private static final float[] BIG = Tensors.random(600 * 701, 1);   // 1.68 MB: two chunks
    private static final float[] ODD = Tensors.random(3 * 7, 2);        // 84 bytes
    private static final float[] SCALAR = {(float) Math.PI};
    private static final float[] AWKWARD = Tensors.awkward();

    private Path write(String name, Map<String, String> metadata, List<TensorOut> tensors) throws IOException {
        Path p = dir.resolve(name);
        try (FileChannel ch = FileChannel.open(p, StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE)) {
            SafetensorsWriter.Written w = SafetensorsWriter.write(ch, metadata, tensors, IoBuffers.take());
            assertEquals(Files.size(p), w.bytes());
            CRC32C crc = new CRC32C();
            crc.update(Files.readAllBytes(p));
            assertEquals((int) crc.getValue(), w.crc32c(), "CRC computed while writing matches the file");
            assertEquals(tensors.size(), w.tensors());
        }
        return p;
    }

    private List<TensorOut> sample() {
        return List.of(
                Tensors.of("layer.weight", BIG, 600, 701),
                Tensors.of("odd", ODD, 3, 7, 1),
                Tensors.of("scale", SCALAR),
                Tensors.of("empty", new float[0], 0, 4),
                Tensors.of("awkward", AWKWARD, AWKWARD.length));
    }

    @Test
    void roundTripIsBitExactAndChunked() throws IOException {
        Map<String, String> meta = new LinkedHashMap<>();
        meta.put("zeta", "last key first");
        meta.put("note", "ünïcødé ✓");
        Path p = write("t.safetensors", meta, sample());
        try (SafetensorsFile f = SafetensorsFile.open(p)) {
            assertEquals(List.of("layer.weight", "odd", "scale", "empty", "awkward"), new ArrayList<>(f.tensors().keySet()));
            assertEquals(meta, f.metadata());
            assertEquals(List.of("zeta", "note"), new ArrayList<>(f.metadata().keySet()));
            assertArrayEquals(new long[] {600, 701}, f.tensors().get("layer.weight").shape());
            assertEquals(600 * 701, f.tensors().get("layer.weight").numel());
            assertArrayEquals(new long[0], f.tensors().get("scale").shape());
            assertEquals(1, f.tensors().get("scale").numel());
            assertEquals(0, f.tensors().get("empty").numel());

            Tensors.Collected big = new Tensors.Collected(f, "layer.weight");
            Tensors.assertBitExact(BIG, big.values);
            assertEquals(List.of(1 << 20, BIG.length * 4 - (1 << 20)), big.chunkBytes);
            Tensors.assertBitExact(ODD, new Tensors.Collected(f, "odd").values);
            Tensors.assertBitExact(SCALAR, new Tensors.Collected(f, "scale").values);
            Tensors.assertBitExact(AWKWARD, new Tensors.Collected(f, "awkward").values);
            Tensors.Collected empty = new Tensors.Collected(f, "empty");
            assertEquals(0, empty.values.length);
            assertTrue(empty.chunkBytes.isEmpty());
            assertThrows(IllegalArgumentException.class, () -> f.readAll("nope", (o, b) -> { }));
        }
    }

    /** Parses the file by hand, following the safetensors specification, without SafetensorsFile. */
    @Test
    void headerLayoutFollowsTheSpecification() throws IOException {
        Path p = write("t.safetensors", Map.of("k", "v"), sample());
        byte[] bytes = Files.readAllBytes(p);
        long n = ByteBuffer.wrap(bytes, 0, 8).order(ByteOrder.LITTLE_ENDIAN).getLong();
        assertEquals(0, (8 + n) % 8, "data starts 8-byte aligned");
        String header = new String(bytes, 8, (int) n, StandardCharsets.UTF_8);
        assertTrue(header.startsWith("{\"__metadata__\":{\"k\":\"v\"}"), header);
        int close = header.lastIndexOf('}');
        assertTrue(header.length() - close - 1 < 8, "at most 7 bytes of padding");
        for (int i = close + 1; i < header.length(); i++) {
            assertEquals(' ', header.charAt(i), "padding is spaces");
        }
        JsonNode root = new ObjectMapper().readTree(header);
        Iterator<String> keys = root.fieldNames();
        List<String> order = new ArrayList<>();
        keys.forEachRemaining(order::add);
        assertEquals(List.of("__metadata__", "layer.weight", "odd", "scale", "empty", "awkward"), order);

        long dataStart = 8 + n;
        long expectedBegin = 0;
        Map<String, float[]> values = Map.of("layer.weight", BIG, "odd", ODD, "scale", SCALAR, "empty", new float[0],
                "awkward", AWKWARD);
        for (String key : order.subList(1, order.size())) {
            JsonNode t = root.get(key);
            assertEquals("F32", t.get("dtype").asText());
            long numel = 1;
            for (JsonNode d : t.get("shape")) {
                numel *= d.asLong();
            }
            long begin = t.get("data_offsets").get(0).asLong();
            long end = t.get("data_offsets").get(1).asLong();
            assertEquals(expectedBegin, begin, key + " follows the previous tensor");
            assertEquals(numel * 4, end - begin, key + " spans its shape");
            float[] expect = values.get(key);
            ByteBuffer data = ByteBuffer.wrap(bytes, (int) (dataStart + begin), (int) (end - begin))
                    .order(ByteOrder.LITTLE_ENDIAN);
            for (float v : expect) {
                assertEquals(Float.floatToRawIntBits(v), data.getInt(), key);
            }
            expectedBegin = end;
        }
        assertEquals(bytes.length - dataStart, expectedBegin, "data ends at the end of the file");
        assertEquals("[]", root.get("scale").get("shape").toString());
    }

    /** Headers of every length modulo 8: each is padded with spaces to align the data. */
    @Test
    void everyHeaderLengthIsPaddedToEightBytes() throws IOException {
        Set<Long> unpaddedResidues = new HashSet<>();
        for (int extra = 0; extra < 8; extra++) {
            Path p = write("pad" + extra + ".safetensors", Map.of("k", "v".repeat(1 + extra)),
                    List.of(Tensors.of("odd", ODD, 21)));
            byte[] bytes = Files.readAllBytes(p);
            long n = ByteBuffer.wrap(bytes, 0, 8).order(ByteOrder.LITTLE_ENDIAN).getLong();
            assertEquals(0, (8 + n) % 8, "aligned with " + extra + " extra metadata bytes");
            String header = new String(bytes, 8, (int) n, StandardCharsets.UTF_8);
            String json = header.stripTrailing();
            assertTrue(json.endsWith("}"));
            assertEquals(" ".repeat(header.length() - json.length()), header.substring(json.length()));
            assertTrue(header.length() - json.length() < 8);
            unpaddedResidues.add((long) json.getBytes(StandardCharsets.UTF_8).length % 8);
            assertEquals(8 + n + 84, bytes.length);
            try (SafetensorsFile f = SafetensorsFile.open(p)) {
                Tensors.assertBitExact(ODD, new Tensors.Collected(f, "odd").values);
            }
        }
        assertEquals(8, unpaddedResidues.size(), "every residue was exercised");
    }

    @Test
    void writerRejectsBadKeysAndShortReaders() throws IOException {
        assertThrows(IllegalArgumentException.class,
                () -> write("a", Map.of(), List.of(Tensors.of("x", ODD, 21), Tensors.of("x", ODD, 21))));
        assertThrows(IllegalArgumentException.class,
                () -> write("b", Map.of(), List.of(Tensors.of("__metadata__", ODD, 21))));
        assertThrows(IllegalArgumentException.class, () -> Tensors.of("neg", ODD, 3, -7));
        TensorOut lazy = new TensorOut("lazy", new long[] {4}, (offset, count, dst) -> dst.putFloat(1f));
        IllegalStateException e = assertThrows(IllegalStateException.class, () -> write("c", Map.of(), List.of(lazy)));
        assertTrue(e.getMessage().contains("lazy"), e.getMessage());
    }

    private Path rawFile(String name, String header, int dataBytes) throws IOException {
        byte[] h = header.getBytes(StandardCharsets.UTF_8);
        ByteBuffer b = ByteBuffer.allocate(8 + h.length + dataBytes).order(ByteOrder.LITTLE_ENDIAN);
        b.putLong(h.length).put(h);
        Path p = dir.resolve(name);
        Files.write(p, b.array());
        return p;
    }

    private void assertRejected(String why, String header, int dataBytes) throws IOException {
        Path p = rawFile("bad.safetensors", header, dataBytes);
        SafetensorsFormatException e = assertThrows(SafetensorsFormatException.class, () -> SafetensorsFile.open(p));
        assertTrue(e.getMessage().startsWith("bad.safetensors: "), e.getMessage());
        assertTrue(e.getMessage().contains(why), e.getMessage() + " should say " + why);
        Files.delete(p);
    }

    @Test
    void readerValidatesTheHeader() throws IOException {
        // A valid hand-written file with tensors out of data order is accepted.
        Path ok = rawFile("ok.safetensors",
                "{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]},"
                        + "\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}", 8);
        try (SafetensorsFile f = SafetensorsFile.open(ok)) {
            assertEquals(List.of("b", "a"), new ArrayList<>(f.tensors().keySet()));
            assertEquals(Map.of(), f.metadata());
        }
        assertRejected("only F32", "{\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4);
        assertRejected("not contiguous", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8);
        assertRejected("ends at", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8);
        assertRejected("outside", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4);
        assertRejected("shape needs", "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8);
        assertRejected("not contiguous", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                + "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12);
        assertRejected("not valid JSON", "{\"a\":", 0);
        assertRejected("not valid JSON", "{\"a\":{}, \"a\":{}}", 0);
        assertRejected("not a string", "{\"__metadata__\":{\"k\":1}}", 0);
        assertRejected("start with", " []", 0);

        Path shortFile = dir.resolve("short.safetensors");
        Files.write(shortFile, new byte[] {1, 2, 3});
        assertThrows(SafetensorsFormatException.class, () -> SafetensorsFile.open(shortFile));
        Path hugeHeader = dir.resolve("huge.safetensors");
        Files.write(hugeHeader, ByteBuffer.allocate(16).order(ByteOrder.LITTLE_ENDIAN).putLong(1L << 40).array());
        assertThrows(SafetensorsFormatException.class, () -> SafetensorsFile.open(hugeHeader));
    }
}
