package dev.optsidecar.server.snapshot;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.optsidecar.proto.v1.ExportInfo;
import dev.optsidecar.proto.v1.SnapshotInfo;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;
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
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import java.util.logging.Handler;
import java.util.logging.Level;
import java.util.logging.LogRecord;
import java.util.logging.Logger;
import java.util.stream.Collectors;
import java.util.stream.Stream;
import java.util.zip.CRC32C;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

class SnapshotStoreTest {
    @TempDir
    Path root;

    private static final ObjectMapper JSON = new ObjectMapper();
    private static final float[] W = Tensors.random(300_000, 11);    // 1.2 MB: two chunks
    private static final float[] B = Tensors.random(17, 12);          // odd size
    private static final float[] M = Tensors.random(300_000, 13);
    private static final float[] V = Tensors.random(300_000, 14);
    private static final float[] STEP = {1200f};

    private static List<FileOut> files(float scale) {
        float[] w = W.clone();
        for (int i = 0; i < w.length; i++) {
            w[i] *= scale;
        }
        return List.of(
                new FileOut("weights.safetensors", Map.of("kind", "weights"),
                        List.of(Tensors.of("w", w, 500, 600), Tensors.of("b", B, 17))),
                new FileOut("state.safetensors", Map.of("kind", "state"),
                        List.of(Tensors.of("w.exp_avg", M, 500, 600), Tensors.of("w.exp_avg_sq", V, 500, 600),
                                Tensors.of("step", STEP))));
    }

    private static JsonNode meta(String model) {
        ObjectNode n = JSON.createObjectNode();
        n.put("algorithm", "RAdam");
        n.putArray("groups").addObject().put("lr", 0.001).put("name", model);
        n.put("unicode", "模型 ✓");
        return n;
    }

    private static SnapshotInfo snapshot(SnapshotStore store, String model, long version) throws IOException {
        return store.commit(store.stage(model, "rpc", version, meta(model), files(version)));
    }

    private static List<String> ids(List<SnapshotInfo> infos) {
        return infos.stream().map(SnapshotInfo::getId).collect(Collectors.toList());
    }

    private static Set<String> entries(Path dir) throws IOException {
        try (Stream<Path> s = Files.list(dir)) {
            return s.map(p -> p.getFileName().toString()).collect(Collectors.toCollection(TreeSet::new));
        }
    }

    @Test
    void roundTrip() throws IOException {
        SnapshotStore store = new SnapshotStore(root, 3);
        Pending p = store.stage("m", "register", 7, meta("m"), files(1));
        assertEquals("000001", p.id());
        assertEquals("m", p.model());
        assertEquals(7, p.version());
        assertTrue(Files.isDirectory(store.modelDir("m").resolve(".tmp-000001")));
        assertEquals(List.of(), store.list("m"), "a staged snapshot is not listed");

        SnapshotInfo info = store.commit(p);
        assertEquals("m", info.getModel());
        assertEquals("000001", info.getId());
        assertEquals(7, info.getVersion());
        assertEquals("register", info.getTrigger());
        assertEquals("m/000001", info.getPath());
        assertTrue(info.getValid());
        Path dir = root.resolve(info.getPath());
        assertEquals(Set.of("weights.safetensors", "state.safetensors", "manifest.json", "manifest.crc32c"), entries(dir));
        long onDisk = 0;
        for (String f : entries(dir)) {
            onDisk += Files.size(dir.resolve(f));
        }
        assertEquals(onDisk, info.getBytes());
        assertEquals(Set.of("000001"), entries(store.modelDir("m")), "the temporary directory is gone");
        assertEquals(List.of(info), store.list("m"), "list verifies to the same info");

        Snapshot s = store.open("m", "000001");
        assertEquals(info, s.info());
        assertEquals(meta("m"), s.modelMeta());
        assertEquals("register", s.trigger());
        assertEquals(7, s.version());
        assertEquals(List.of("weights.safetensors", "state.safetensors"), s.fileNames());
        assertNull(s.file("optimizer.safetensors"));
        try (SafetensorsFile w = s.file("weights.safetensors"); SafetensorsFile st = s.file("state.safetensors")) {
            assertEquals(Map.of("kind", "weights"), w.metadata());
            Tensors.Collected wv = new Tensors.Collected(w, "w");
            Tensors.assertBitExact(W, wv.values);
            assertEquals(2, wv.chunkBytes.size());
            Tensors.assertBitExact(B, new Tensors.Collected(w, "b").values);
            Tensors.assertBitExact(M, new Tensors.Collected(st, "w.exp_avg").values);
            Tensors.assertBitExact(V, new Tensors.Collected(st, "w.exp_avg_sq").values);
            Tensors.assertBitExact(STEP, new Tensors.Collected(st, "step").values);
            assertArrayEquals(new long[0], st.tensors().get("step").shape());
        }
    }

    @Test
    void manifestDescribesEveryFileAndIsChecksummed() throws IOException {
        SnapshotStore store = new SnapshotStore(root, 3);
        SnapshotInfo info = snapshot(store, "m", 42);
        Path dir = root.resolve(info.getPath());
        byte[] json = Files.readAllBytes(dir.resolve("manifest.json"));
        CRC32C crc = new CRC32C();
        crc.update(json);
        assertEquals(String.format("%08x%n", crc.getValue()),
                Files.readString(dir.resolve("manifest.crc32c"), StandardCharsets.US_ASCII));
        String text = new String(json, StandardCharsets.UTF_8);
        assertTrue(text.contains("\n  \"format\""), "pretty-printed: " + text);
        JsonNode m = JSON.readTree(json);
        assertEquals("optsidecar-snapshot", m.get("format").asText());
        assertEquals(2, m.get("format_version").asInt());
        assertEquals("m", m.get("model").asText());
        assertEquals("000001", m.get("id").asText());
        assertEquals(42, m.get("version").asLong());
        assertEquals("rpc", m.get("trigger").asText());
        assertEquals(info.getCreatedUnixMillis(), m.get("created_unix_millis").asLong());
        assertTrue(Math.abs(System.currentTimeMillis() - info.getCreatedUnixMillis()) < 600_000);
        assertEquals(meta("m"), m.get("model_meta"));
        List<String> names = new ArrayList<>();
        m.get("files").fieldNames().forEachRemaining(names::add);
        assertEquals(List.of("weights.safetensors", "state.safetensors"), names);
        for (String name : names) {
            JsonNode f = m.get("files").get(name);
            Path p = dir.resolve(name);
            assertEquals(Files.size(p), f.get("bytes").asLong());
            CRC32C fc = new CRC32C();
            fc.update(Files.readAllBytes(p));
            assertEquals(String.format("%08x", fc.getValue()), f.get("crc32c").asText());
        }
        assertEquals(2, m.get("files").get("weights.safetensors").get("tensors").asInt());
        assertEquals(3, m.get("files").get("state.safetensors").get("tensors").asInt());
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
        assertEquals(meta("m"), store.open("m", "000002").modelMeta());
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

    @Test
    void leftoverTempDirectoriesAreIgnoredThenRemoved() throws IOException {
        SnapshotStore store = new SnapshotStore(root, 3);
        snapshot(store, "m", 1);
        Path modelDir = store.modelDir("m");
        // A crash mid-commit: complete-looking contents, but still under its temporary name.
        Path leftover = modelDir.resolve(".tmp-000009");
        Files.createDirectory(leftover);
        for (String f : entries(modelDir.resolve("000001"))) {
            Files.copy(modelDir.resolve("000001").resolve(f), leftover.resolve(f));
        }
        Files.createDirectory(modelDir.resolve(".del-000000"));
        assertEquals(List.of("000001"), ids(store.list("m")));
        assertEquals(List.of("000001"), ids(store.listAll()));
        assertThrows(NoSuchFileException.class, () -> store.open("m", "000009"));
        assertThrows(NoSuchFileException.class, () -> store.open("m", ".tmp-000009"));
        assertEquals("000001", store.openLatestValid("m").id());

        SnapshotInfo next = snapshot(store, "m", 2);
        assertEquals("000010", next.getId(), "ids continue above the leftover");
        assertEquals(Set.of("000001", "000010"), entries(modelDir), "leftovers removed by the commit");
    }

    @Test
    void aCommitLeavesOtherStagedSnapshotsAlone() throws IOException {
        SnapshotStore store = new SnapshotStore(root, 3);
        Pending first = store.stage("m", "steps", 1, meta("m"), files(1));
        Pending second = store.stage("m", "steps", 2, meta("m"), files(2));
        assertEquals("000002", second.id());
        store.commit(second);
        assertTrue(Files.isDirectory(store.modelDir("m").resolve(".tmp-000001")));
        store.commit(first);
        assertEquals(List.of("000001", "000002"), ids(store.list("m")));
        assertTrue(store.list("m").stream().allMatch(SnapshotInfo::getValid));
    }

    @Test
    void abortAndFailuresNeverReuseAnId() throws IOException {
        SnapshotStore store = new SnapshotStore(root, 3);
        Pending p = store.stage("m", "rpc", 1, meta("m"), files(1));
        store.abort(p);
        store.abort(p);
        assertFalse(Files.exists(store.modelDir("m").resolve(".tmp-000001")));
        assertThrows(IllegalStateException.class, () -> store.commit(p));

        TensorOut broken = new TensorOut("x", new long[] {10}, (offset, count, dst) -> {
            throw new IllegalStateException("model went away");
        });
        assertThrows(IllegalStateException.class,
                () -> store.stage("m", "rpc", 1, meta("m"), List.of(new FileOut("a.safetensors", Map.of(), List.of(broken)))));
        assertEquals(Set.of(), entries(store.modelDir("m")), "the failed stage cleaned up");

        SnapshotInfo info = snapshot(store, "m", 2);
        assertEquals("000003", info.getId());
        Pending committed = store.stage("m", "rpc", 3, meta("m"), files(3));
        store.commit(committed);
        assertThrows(IllegalStateException.class, () -> store.commit(committed));
        store.abort(committed);
        assertTrue(store.list("m").stream().allMatch(SnapshotInfo::getValid));

        // A later store on the same root continues the sequence.
        SnapshotStore again = new SnapshotStore(root, 3);
        assertEquals("000005", snapshot(again, "m", 4).getId());
        assertEquals(List.of("000003", "000004", "000005"), ids(again.list("m")));
    }

    @Test
    void aFailedCommitCleansUpAndLosesOnlyThatSnapshot() throws IOException {
        SnapshotStore store = new SnapshotStore(root, 3);
        snapshot(store, "m", 1);
        Pending p = store.stage("m", "rpc", 2, meta("m"), files(2));
        Files.delete(store.modelDir("m").resolve(".tmp-" + p.id()).resolve("state.safetensors"));
        assertThrows(NoSuchFileException.class, () -> store.commit(p));
        assertEquals(Set.of("000001"), entries(store.modelDir("m")));
        store.abort(p);
        assertThrows(IllegalStateException.class, () -> store.commit(p));
        assertEquals("000003", snapshot(store, "m", 3).getId());
        assertEquals(List.of("000001", "000003"), ids(store.list("m")));
    }

    @Test
    void concurrentSnapshotsGetDistinctIdsAndStayValid() throws Exception {
        SnapshotStore store = new SnapshotStore(root, 4);
        int threads = 4;
        int each = 3;
        java.util.concurrent.ExecutorService pool = java.util.concurrent.Executors.newFixedThreadPool(threads);
        try {
            List<java.util.concurrent.Future<List<String>>> futures = new ArrayList<>();
            for (int t = 0; t < threads; t++) {
                futures.add(pool.submit(() -> {
                    List<String> got = new ArrayList<>();
                    for (int i = 0; i < each; i++) {
                        Pending p = store.stage("shared", "steps", i, meta("shared"), files(i));
                        got.add(store.commit(p).getId());
                    }
                    return got;
                }));
            }
            Set<String> all = new TreeSet<>();
            for (java.util.concurrent.Future<List<String>> f : futures) {
                all.addAll(f.get());
            }
            assertEquals(threads * each, all.size(), "no id issued twice");
        } finally {
            pool.shutdownNow();
        }
        List<SnapshotInfo> kept = store.list("shared");
        assertEquals(4, kept.size());
        assertTrue(kept.stream().allMatch(SnapshotInfo::getValid));
        assertEquals(List.of("000009", "000010", "000011", "000012"), ids(kept));
        assertEquals(Set.of("000009", "000010", "000011", "000012"), entries(store.modelDir("shared")));
    }

    @Test
    void stageRejectsBadFileNames() throws IOException {
        SnapshotStore store = new SnapshotStore(root, 3);
        for (String name : List.of("../x", "a/b", ".hidden", "manifest.json", "manifest.crc32c", "")) {
            FileOut f = new FileOut(name, Map.of(), List.of(Tensors.of("b", B, 17)));
            assertThrows(IllegalArgumentException.class, () -> store.stage("m", "rpc", 1, null, List.of(f)), name);
        }
        FileOut f = new FileOut("a.safetensors", Map.of(), List.of());
        assertThrows(IllegalArgumentException.class, () -> store.stage("m", "rpc", 1, null, List.of(f, f)));
        assertThrows(IllegalArgumentException.class, () -> store.stage("", "rpc", 1, null, List.of(f)));
        assertThrows(IllegalArgumentException.class, () -> new SnapshotStore(root, 0));
    }

    private static final class Captured extends Handler implements AutoCloseable {
        final List<LogRecord> records = new ArrayList<>();
        private final Logger logger = Logger.getLogger(SnapshotStore.class.getName());

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
            assertEquals(3, log.warnings().size());
            assertTrue(log.warnings().get(2).endsWith("no older snapshot to fall back to"), log.warnings().get(2));
        }
        assertThrows(NoSuchFileException.class, () -> store.openLatestValid("never-saved"));
        assertThrows(NoSuchFileException.class, () -> store.open("never-saved", "000001"));
        assertThrows(NoSuchFileException.class, () -> store.open("m", "000004"));
        assertThrows(NoSuchFileException.class, () -> store.open("m", "1"));
    }

    @Test
    void retentionKeepsTheNewestAndTheirJournals() throws IOException {
        SnapshotStore store = new SnapshotStore(root, 2);
        Path modelDir = store.modelDir("m");
        for (int v = 1; v <= 4; v++) {
            SnapshotInfo info = snapshot(store, "m", v);
            Files.writeString(modelDir.resolve("journal-" + info.getId() + ".log"), "steps since " + info.getId());
        }
        assertEquals(List.of("000003", "000004"), ids(store.list("m")));
        // Each journal goes with the last snapshot before it; journal-000004 was written after the last commit.
        assertEquals(Set.of("000003", "000004", "journal-000003.log", "journal-000004.log"), entries(modelDir));
        snapshot(store, "m", 5);
        assertEquals(Set.of("000004", "000005", "journal-000004.log"), entries(modelDir));
        Files.writeString(modelDir.resolve("journal-notes.txt"), "not a journal");
        snapshot(store, "m", 6);
        assertEquals(Set.of("000005", "000006", "journal-notes.txt"), entries(modelDir));
        // Other models are not touched.
        snapshot(store, "other", 1);
        assertEquals(List.of("000005", "000006"), ids(store.list("m")));
    }

    @Test
    void idsIncreaseAndSurviveANewStore() throws IOException {
        SnapshotStore store = new SnapshotStore(root, 10);
        assertEquals("000001", snapshot(store, "a", 1).getId());
        assertEquals("000002", snapshot(store, "a", 2).getId());
        assertEquals("000001", snapshot(store, "b", 1).getId(), "ids are per model");
        SnapshotStore reopened = new SnapshotStore(root.resolve(".").resolve("x").resolve(".."), 10);
        assertEquals(root.toAbsolutePath().normalize(), reopened.root());
        assertEquals(List.of("000001", "000002"), ids(reopened.list("a")));
        assertEquals("000003", snapshot(reopened, "a", 3).getId());
        // Journals count too: a journal for an id means that id was used.
        Files.writeString(reopened.modelDir("b").resolve("journal-000007.log"), "");
        assertEquals("000008", snapshot(reopened, "b", 2).getId());
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

    @Test
    void tombstoneHidesTheModelButKeepsItsSnapshots() throws IOException {
        SnapshotStore store = new SnapshotStore(root, 5);
        snapshot(store, "gone", 1);
        snapshot(store, "kept", 1);
        store.tombstone("gone");
        store.tombstone("gone");
        assertTrue(store.isTombstoned("gone"));
        assertTrue(Files.exists(store.modelDir("gone").resolve("DELETED")));
        assertEquals(List.of("kept"), store.models());
        assertEquals(1, store.list("gone").size());
        assertEquals("000001", store.open("gone", "000001").id());
        assertEquals(2, store.listAll().size());
        SnapshotInfo next = snapshot(store, "gone", 2);
        assertEquals("000002", next.getId());
        assertEquals(List.of("kept"), store.models(), "still tombstoned after a snapshot");
        store.clearTombstone("gone");
        store.clearTombstone("gone");
        assertFalse(store.isTombstoned("gone"));
        assertEquals(List.of("gone", "kept"), store.models());
        store.tombstone("never-saved");
        assertEquals(List.of("gone", "kept"), store.models());
    }

    @Test
    void exportWritesSafetensorsAndSidecar() throws IOException {
        SnapshotStore store = new SnapshotStore(root, 5);
        View ema = View.newBuilder().setKind(ViewKind.VIEW_EMA).setEmaDecay(0.999).build();
        FileOut weights = new FileOut("ignored.safetensors", Map.of("architecture", "mlp", "model", "overridden"),
                List.of(Tensors.of("w", W, 500, 600), Tensors.of("b", B, 17)));
        ExportInfo info = store.export("org/net", 1200, ema, weights);
        assertEquals("org/net", info.getModel());
        assertEquals(1200, info.getVersion());
        assertEquals(ema, info.getView());
        assertEquals("exports/org%2Fnet/v1200-ema-0.999.safetensors", info.getPath());
        Path file = root.resolve(info.getPath());
        assertEquals(Files.size(file), info.getBytes());
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            assertEquals(Map.of("architecture", "mlp", "format", "optsidecar-export", "resumable", "false",
                    "model", "org/net", "version", "1200", "view", "ema-0.999"), f.metadata());
            Tensors.assertBitExact(W, new Tensors.Collected(f, "w").values);
            Tensors.assertBitExact(B, new Tensors.Collected(f, "b").values);
        }
        JsonNode sidecar = JSON.readTree(root.resolve(info.getPath() + ".json").toFile());
        CRC32C crc = new CRC32C();
        crc.update(Files.readAllBytes(file));
        JsonNode expected = JSON.readTree("{\"kind\": \"export\", \"resumable\": false, \"model\": \"org/net\","
                + " \"version\": 1200, \"view\": \"ema-0.999\", \"bytes\": " + Files.size(file)
                + ", \"crc32c\": \"" + String.format("%08x", crc.getValue()) + "\"}");
        assertEquals(expected, sidecar);

        // Same version and view again: replaced in place, no temporary files left.
        ExportInfo again = store.export("org/net", 1200, ema,
                new FileOut("x", Map.of(), List.of(Tensors.of("b", B, 17))));
        assertEquals(info.getPath(), again.getPath());
        assertEquals(Files.size(file), again.getBytes());
        assertTrue(again.getBytes() < info.getBytes());
        store.export("org/net", 1300, View.newBuilder().setKind(ViewKind.VIEW_EVAL).build(),
                new FileOut("x", Map.of(), List.of(Tensors.of("b", B, 17))));
        assertEquals(Set.of("v1200-ema-0.999.safetensors", "v1200-ema-0.999.safetensors.json",
                "v1300-eval.safetensors", "v1300-eval.safetensors.json"), entries(file.getParent()));
        assertEquals(List.of(), store.models(), "exports are not snapshots");
        assertEquals(List.of(), store.listAll());
        assertThrows(IllegalArgumentException.class, () -> store.export("org/net", 1,
                View.newBuilder().setKind(ViewKind.VIEW_NONE).build(), weights));
    }

    @Test
    void viewLabels() {
        assertEquals("train", SnapshotStore.viewLabel(View.newBuilder().setKind(ViewKind.VIEW_TRAIN).build()));
        assertEquals("eval", SnapshotStore.viewLabel(View.newBuilder().setKind(ViewKind.VIEW_EVAL).build()));
        assertEquals("slow", SnapshotStore.viewLabel(View.newBuilder().setKind(ViewKind.VIEW_SLOW).build()));
        assertEquals("ema-0.9999",
                SnapshotStore.viewLabel(View.newBuilder().setKind(ViewKind.VIEW_EMA).setEmaDecay(0.9999).build()));
        assertEquals("ema-0.5",
                SnapshotStore.viewLabel(View.newBuilder().setKind(ViewKind.VIEW_EMA).setEmaDecay(0.5).build()));
        assertEquals("slot-exp_avg",
                SnapshotStore.viewLabel(View.newBuilder().setKind(ViewKind.VIEW_SLOT).setSlot("exp_avg").build()));
        assertThrows(IllegalArgumentException.class,
                () -> SnapshotStore.viewLabel(View.newBuilder().setKind(ViewKind.VIEW_KIND_UNSPECIFIED).build()));
    }
}
