package dev.optsidecar.server.snapshot;

import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.optsidecar.proto.v1.SnapshotInfo;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

import java.io.IOException;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.List;
import java.util.Set;
import java.util.TreeSet;
import java.util.logging.Handler;
import java.util.logging.Level;
import java.util.logging.LogRecord;
import java.util.logging.Logger;
import java.util.stream.Collectors;
import java.util.zip.CRC32C;

import static dev.optsidecar.server.snapshot.SnapshotFixtures.JSON;
import static dev.optsidecar.server.snapshot.SnapshotFixtures.ids;
import static dev.optsidecar.server.snapshot.SnapshotFixtures.snapshot;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** Listing and opening: every kind of damage is found, and the newest valid snapshot is used. */
class SnapshotReaderTest {
    @TempDir
    Path root;

    /** Each way a snapshot can be damaged, and the problem it must report. */
    @ParameterizedTest
    @ValueSource(strings = {"flip-weights-data", "flip-weights-header", "flip-state-data", "flip-manifest",
            "truncate-state", "extend-weights", "missing-weights", "missing-manifest", "missing-manifest-crc",
            "bad-manifest-json", "newer-format-version"})
    void corruptionIsDetected(String damage) throws IOException {
        SnapshotStore store = new SnapshotStore(root, 3);
        SnapshotInfo good = snapshot(store, "m", 1);
        SnapshotInfo info = snapshot(store, "m", 2);
        Path dir = root.resolve(info.getPath());
        String expected = switch (damage) {
            case "flip-weights-data" -> {
                Tensors.flipByte(dir.resolve("weights.safetensors"), -5);
                yield "weights.safetensors: CRC32C mismatch";
            }
            case "flip-weights-header" -> {
                Tensors.flipByte(dir.resolve("weights.safetensors"), 20);
                yield "weights.safetensors: CRC32C mismatch";
            }
            case "flip-state-data" -> {
                Path p = dir.resolve("state.safetensors");
                Tensors.flipByte(p, Tensors.headerLength(p) + 8 + 1000);
                yield "state.safetensors: CRC32C mismatch";
            }
            case "flip-manifest" -> {
                Tensors.flipByte(dir.resolve("manifest.json"), 30);
                yield "manifest.json: CRC32C mismatch";
            }
            case "truncate-state" -> {
                try (FileChannel ch = FileChannel.open(dir.resolve("state.safetensors"), StandardOpenOption.WRITE)) {
                    ch.truncate(ch.size() - 4);
                }
                yield "state.safetensors: truncated";
            }
            case "extend-weights" -> {
                Files.write(dir.resolve("weights.safetensors"), new byte[8], StandardOpenOption.APPEND);
                yield "weights.safetensors: too long";
            }
            case "missing-weights" -> {
                Files.delete(dir.resolve("weights.safetensors"));
                yield "weights.safetensors: missing";
            }
            case "missing-manifest" -> {
                Files.delete(dir.resolve("manifest.json"));
                yield "manifest.json: missing";
            }
            case "missing-manifest-crc" -> {
                Files.delete(dir.resolve("manifest.crc32c"));
                yield "manifest.crc32c: missing";
            }
            case "bad-manifest-json" -> {
                // Consistent checksum, broken JSON: the manifest itself must be rejected.
                byte[] bad = "{\"format\": \"optsidecar-snapshot\", ".getBytes(StandardCharsets.UTF_8);
                Files.write(dir.resolve("manifest.json"), bad);
                CRC32C crc = new CRC32C();
                crc.update(bad);
                Files.writeString(dir.resolve("manifest.crc32c"), String.format("%08x%n", crc.getValue()));
                yield "manifest.json: not valid JSON";
            }
            case "newer-format-version" -> {
                rewriteFormatVersion(dir, 3);
                yield "manifest.json: unsupported format_version 3";
            }
            default -> throw new AssertionError(damage);
        };
        List<SnapshotInfo> listed = store.list("m");
        assertEquals(2, listed.size());
        assertTrue(listed.get(0).getValid());
        assertEquals("", listed.get(0).getProblem());
        SnapshotInfo bad = listed.get(1);
        assertFalse(bad.getValid());
        assertTrue(bad.getProblem().startsWith(expected), bad.getProblem() + " should start with " + expected);
        CorruptSnapshotException e = assertThrows(CorruptSnapshotException.class, () -> store.open("m", "000002"));
        assertTrue(e.getMessage().contains(expected), e.getMessage());
        assertEquals("000002", e.id());
        assertEquals(good.getId(), store.openLatestValid("m").id());
    }

    @Test
    void sizeOnlyListingSkipsTheDataButNotTheManifest() throws IOException {
        SnapshotStore store = new SnapshotStore(root, 3);
        SnapshotInfo info = snapshot(store, "m", 1);
        Tensors.flipByte(root.resolve(info.getPath()).resolve("weights.safetensors"), -1);
        assertTrue(store.list("m", false).get(0).getValid());
        assertFalse(store.list("m", true).get(0).getValid());
        Tensors.flipByte(root.resolve(info.getPath()).resolve("manifest.json"), 10);
        assertFalse(store.list("m", false).get(0).getValid());
    }

    /** A manifest of an older format version still opens, and says which version it is. */
    @Test
    void olderFormatVersionsOpenAndSayWhichTheyAre() throws IOException {
        SnapshotStore store = new SnapshotStore(root, 3);
        snapshot(store, "m", 1);
        SnapshotInfo older = snapshot(store, "m", 2);
        rewriteFormatVersion(root.resolve(older.getPath()), 1);
        assertEquals(2, store.open("m", "000001").formatVersion());
        assertEquals(1, store.open("m", "000002").formatVersion());
        assertEquals(SnapshotFixtures.meta("m"), store.open("m", "000002").modelMeta());
    }

    /** Sets a committed snapshot's manifest format_version, with a matching checksum. */
    private static void rewriteFormatVersion(Path dir, int version) throws IOException {
        ObjectNode m = (ObjectNode) JSON.readTree(dir.resolve("manifest.json").toFile());
        m.put("format_version", version);
        byte[] json = JSON.writeValueAsBytes(m);
        Files.write(dir.resolve("manifest.json"), json);
        CRC32C crc = new CRC32C();
        crc.update(json);
        Files.writeString(dir.resolve("manifest.crc32c"), String.format("%08x%n", crc.getValue()));
    }

    private static final class Captured extends Handler implements AutoCloseable {
        final List<LogRecord> records = new ArrayList<>();
        private final Logger logger = Logger.getLogger(SnapshotReader.class.getName());

        Captured() {
            logger.addHandler(this);
        }

        @Override
        public synchronized void publish(LogRecord r) {
            records.add(r);
        }

        @Override
        public void flush() {
        }

        @Override
        public void close() {
            logger.removeHandler(this);
        }

        synchronized List<String> warnings() {
            return records.stream().filter(r -> r.getLevel() == Level.WARNING).map(LogRecord::getMessage)
                    .collect(Collectors.toList());
        }
    }

    @Test
    void openLatestValidFallsBackAndSaysSo() throws IOException {
        SnapshotStore store = new SnapshotStore(root, 5);
        for (int v = 1; v <= 3; v++) {
            snapshot(store, "m", v * 100);
        }
        Path modelDir = store.modelDir("m");
        Tensors.flipByte(modelDir.resolve("000003").resolve("weights.safetensors"), -100);
        Files.delete(modelDir.resolve("000002").resolve("state.safetensors"));
        try (Captured log = new Captured()) {
            Snapshot s = store.openLatestValid("m");
            assertEquals("000001", s.id());
            assertEquals(100, s.version());
            assertEquals(List.of(
                    "snapshot 000003 of model 'm' is corrupt (weights.safetensors: CRC32C mismatch); falling back to 000002",
                    "snapshot 000002 of model 'm' is corrupt (state.safetensors: missing); falling back to 000001"),
                    log.warnings());
        }
        Tensors.flipByte(modelDir.resolve("000001").resolve("manifest.json"), 5);
        try (Captured log = new Captured()) {
            CorruptSnapshotException e = assertThrows(CorruptSnapshotException.class, () -> store.openLatestValid("m"));
            assertTrue(e.getMessage().contains("no valid snapshot"), e.getMessage());
            assertTrue(e.getMessage().contains("000001 (manifest.json: CRC32C mismatch)"), e.getMessage());
            assertTrue(e.getMessage().contains("000003 (weights.safetensors: CRC32C mismatch)"), e.getMessage());
            // Nothing logged: the caller reports the exception once (a failed start's one line, or one warning).
            assertEquals(List.of(), log.warnings());
        }
        assertThrows(NoSuchFileException.class, () -> store.openLatestValid("never-saved"));
        assertThrows(NoSuchFileException.class, () -> store.open("never-saved", "000001"));
        assertThrows(NoSuchFileException.class, () -> store.open("m", "000004"));
        assertThrows(NoSuchFileException.class, () -> store.open("m", "1"));
    }

    @Test
    void modelNamesRoundTripThroughDirectories() throws IOException {
        SnapshotStore store = new SnapshotStore(root, 2);
        List<String> names = List.of("a/b", "..", ".", "-rf", "-", "with space", "plus+sign", "%2E", "dots.and*stars",
                "ünïcødé 模型 🚀", "exports", "Exports", "a\\b", "x".repeat(300), "é".repeat(150), "tab\tnewline\n",
                "~tilde", "CON");
        for (String name : names) {
            snapshot(store, name, 1);
        }
        assertEquals(new TreeSet<>(names), new TreeSet<>(store.models()));
        assertEquals(names.size(), store.models().size());
        Set<String> dirs = new TreeSet<>();
        for (String name : names) {
            String dir = store.modelDir(name).getFileName().toString();
            assertTrue(dirs.add(dir), "distinct directory for " + name);
            assertEquals(root.toAbsolutePath().normalize(), store.modelDir(name).getParent());
            assertFalse(dir.startsWith("."), dir);
            assertFalse(dir.startsWith("-"), dir);
            assertFalse(dir.contains("/") || dir.contains("\\"), dir);
            assertNotEquals("exports", dir.toLowerCase(java.util.Locale.ROOT));
            assertTrue(dir.length() <= 200, dir);
            assertEquals(List.of("000001"), ids(store.list(name)));
            assertEquals(name, store.list(name).get(0).getModel());
            assertEquals(name, store.openLatestValid(name).info().getModel());
        }
        assertEquals("a%2Fb", store.modelDir("a/b").getFileName().toString());
        assertEquals("%2E%2E", store.modelDir("..").getFileName().toString());
        assertEquals("with+space", store.modelDir("with space").getFileName().toString());
        assertEquals("%65xports", store.modelDir("exports").getFileName().toString());
        assertEquals("..", ModelNames.decode("%2E%2E"));
        assertNull(ModelNames.decode("%2e%2e"), "only the canonical spelling decodes");
        assertNull(ModelNames.decode("exports"));
        assertEquals(names.size(), store.listAll().size());
        // listAll orders by model name, then id.
        List<String> models = store.listAll().stream().map(SnapshotInfo::getModel).collect(Collectors.toList());
        List<String> sorted = new ArrayList<>(models);
        sorted.sort(null);
        assertEquals(sorted, models);
        assertThrows(IllegalArgumentException.class, () -> store.modelDir("bad \uD800 surrogate"));
    }

    @Test
    void listAllOrdersByModelThenId() throws IOException {
        SnapshotStore store = new SnapshotStore(root, 5);
        snapshot(store, "b", 1);
        snapshot(store, "a", 1);
        snapshot(store, "b", 2);
        snapshot(store, "a", 2);
        List<String> got = store.listAll().stream().map(i -> i.getModel() + "@" + i.getId() + "@" + i.getVersion())
                .collect(Collectors.toList());
        assertEquals(List.of("a@000001@1", "a@000002@2", "b@000001@1", "b@000002@2"), got);
        assertEquals(List.of(), store.list("c"));
        Files.createDirectories(store.modelDir("c"));
        assertEquals(List.of("a", "b"), store.models(), "a model directory without snapshots is no model");
    }
}
